"""``trainkit list KIND [GLOB]``: registered names with a one-line description."""

from __future__ import annotations

from typing import Sequence

from trainkit.commands.common import registries
from trainkit.errors import ConfigError


def main(args: Sequence[str]) -> int:
    """Print the names of one registry kind (``archs``, ``datasets``, ...), optionally globbed."""
    kinds = registries()
    if not args or args[0] in ("-h", "--help"):
        print(f"usage: trainkit list {{{','.join(kinds)}}} [GLOB]")
        return 0 if args else 2
    if args[0] not in kinds:
        raise ConfigError(f"unknown kind {args[0]!r} (known: {', '.join(kinds)})", "list")
    registry = kinds[args[0]]()
    names = registry.names(args[1] if len(args) > 1 else None)
    width = max((len(n) for n in names), default=0)
    for name in names:
        print(f"{name:<{width}}  {registry.describe(name)}")
    return 0
