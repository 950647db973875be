"""The one YAML loader for everything trainkit reads from users: recipes and their values on
the command line (through jsonargparse), a run's ``config.yaml``, sweep spaces.

It is jsonargparse's own loader (safe: no ``!!python`` tags; its number resolution), plus a
budget on aliases: YAML anchors and aliases let ten lines describe a billion nodes ("billion
laughs"); composing them is cheap, but everything that walks the result (validation, copies,
dumps) expands them, and one such recipe grew to 15 GB in five minutes. The node graph is
measured before anything is built: aliases may add at most :data:`ALIAS_BUDGET` nodes, nesting
is at most :data:`MAX_DEPTH` deep, and a recursive alias is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from jsonargparse import set_loader
from jsonargparse._loaders_dumpers import get_yaml_default_loader  # its resolvers: 1e-3 is a number

from trainkit.errors import ConfigError

ALIAS_BUDGET = 10_000  # nodes that aliases may add; a whole recipe has a few hundred
MAX_DEPTH = 100
MODE = "trainkit_yaml"  # the jsonargparse parser mode that loads with this module


class AliasBudgetExceeded(yaml.YAMLError):
    """A document whose aliases expand beyond the budget, nest too deep, or refer to themselves."""


def check_graph(root: yaml.Node | None) -> None:
    """Measure a composed document; raise :class:`AliasBudgetExceeded` if it is a bomb.

    Nodes reached through aliases are the same objects, so sizes are memoized per node and
    the walk costs the document's length, not its expansion.
    """
    if root is None:
        return
    sizes: dict[int, int] = {}
    unique: set[int] = set()
    on_path: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in on_path:
            raise AliasBudgetExceeded("a recursive alias (a node that contains itself)")
        if depth > MAX_DEPTH:
            raise AliasBudgetExceeded(f"nesting deeper than {MAX_DEPTH} levels")
        unique.add(key)
        on_path.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        on_path.discard(key)
        sizes[key] = total
        if total - len(unique) > ALIAS_BUDGET:
            raise AliasBudgetExceeded(
                f"aliases expand it to more than {ALIAS_BUDGET:,} extra nodes (a 'billion laughs' document?); "
                "write the values out instead of nesting aliases"
            )
        return total

    size(root, 0)


class SafeLoader(get_yaml_default_loader()):  # type: ignore[misc]
    """jsonargparse's safe loader, measuring the document before building it."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        check_graph(node)
        return None if node is None else self.construct_document(node)


def _load(stream: str) -> Any:
    """jsonargparse's ``yaml_load`` with :class:`SafeLoader` (its post-processing copied from
    jsonargparse 4.53: ``{a, b}`` or ``key:`` on the command line, read as mappings of nulls,
    stay strings)."""
    value = yaml.load(stream, Loader=SafeLoader)
    if isinstance(value, dict) and value and all(v is None for v in value.values()):
        if len(value) == 1 and stream.strip() == next(iter(value)) + ":":
            value = stream
        else:
            keys = set(stream.strip(" {}").replace(" ", "").split(","))
            if keys == set(value):
                value = stream
    return value


def load_yaml(text: str, source: str, key: str | None = None) -> Any:
    """Parse ``text`` (from ``source``, named in errors) with the safe, budgeted loader.

    Raises:
        ConfigError: not valid YAML, or an alias bomb.
    """
    try:
        return yaml.load(text, Loader=SafeLoader)
    except AliasBudgetExceeded as e:
        raise ConfigError(f"{source} is refused: {e}", key) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not valid YAML: {e}", key) from None


def check_recipe_files(args: list[str]) -> None:
    """Name the file when a recipe given by ``--config`` is not readable YAML (jsonargparse does
    not), and refuse alias bombs in recipes and in values on the command line before
    jsonargparse expands them (see :mod:`trainkit.safe_yaml`)."""
    for i, arg in enumerate(args):
        if arg in ("-c", "--config") and i + 1 < len(args):
            path = args[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        else:
            if "*" in arg and "&" in arg:  # an inline value with anchors and aliases
                load_yaml(arg.split("=", 1)[-1], f"the value {arg[:40]!r}")
            continue
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read recipe {path!r}: {e.strerror}", "--config") from None
        recipe = load_yaml(text, f"recipe {path!r}", "--config")
        if not isinstance(recipe, dict):
            raise ConfigError(f"recipe {path!r} must be a mapping of keys, got {type(recipe).__name__}", "--config")


def register() -> str:
    """Make :data:`MODE` a jsonargparse parser mode (idempotent); returns its name."""
    set_loader(MODE, _load, exceptions=(yaml.YAMLError,))
    return MODE
