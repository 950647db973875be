"""Helpers the commands share: their option parsing, result tables and the registry kinds.

Light on purpose (no torch import): ``trainkit --help`` reads the registry kinds from here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    import argparse

# kind for ``trainkit list`` -> (module, registry), imported only when asked for
REGISTRIES: dict[str, tuple[str, str]] = {
    "archs": ("trainkit.models", "ARCHS"),
    "activations": ("trainkit.nn.activations", "ACTIVATIONS"),
    "datasets": ("trainkit.data.datasets", "DATASETS"),
    "optimizers": ("trainkit.optim.optimizers", "OPTIMIZERS"),
    "schedules": ("trainkit.optim.schedules", "SCHEDULES"),
    "inits": ("trainkit.nn.init", "INIT_SCHEMES"),
    "norms": ("trainkit.nn.norm", "NORMS"),
    "augmentations": ("trainkit.data.augment", "AUGMENTATIONS"),
}


def registries() -> dict[str, Callable[[], object]]:
    """Kinds for ``trainkit list``, each a function importing its registry."""

    def loader(module: str, attr: str) -> Callable[[], object]:
        return lambda: getattr(importlib.import_module(module), attr)

    return {kind: loader(*where) for kind, where in REGISTRIES.items()}


def command_options(parser: "argparse.ArgumentParser", argv: Sequence[str]) -> tuple[Any, list[str]]:
    """A trainkit command's own options, and the rest (recipe and overrides) it passes on to the
    recipe parser. ``-h``/``--help`` prints the help and exits 0 (``SystemExit``, as argparse)."""
    argv = list(argv)
    if any(a in ("-h", "--help") for a in argv):
        parser.print_help()
        print("\nRecipe options: see `trainkit fit --help`.")
        raise SystemExit(0)
    return parser.parse_known_args(argv)


def join_overrides(tokens: Sequence[str], command: str) -> list[str]:
    """Recipe overrides in the forms LightningCLI takes, as ``--key=value``: ``--key value``
    becomes ``--key=value`` (a value may start with ``-``, as a negative number does).

    >>> join_overrides(["--run.root", "R", "--model.optimizer.lr", "-0.1", "--trainer.max_epochs=3"], "launch")
    ['--run.root=R', '--model.optimizer.lr=-0.1', '--trainer.max_epochs=3']

    Raises:
        ConfigError: a word that is neither a ``--key`` nor its value.
    """
    from trainkit.errors import ConfigError

    out: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise ConfigError(f"overrides are --key=value or --key value, got {token!r}", command)
        if "=" not in token and i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            out.append(f"{token}={tokens[i + 1]}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out


def format_table(metrics: dict[str, float]) -> str:
    """Metrics as an aligned two-column table.

    >>> print(format_table({"val/acc": 0.96, "val/loss": 0.125}))
    metric    value
    val/acc   0.9600
    val/loss  0.1250
    """
    width = max([len("metric")] + [len(k) for k in metrics])
    lines = [f"{'metric':<{width}}  value"]
    lines += [f"{k:<{width}}  {v:.4f}" for k, v in sorted(metrics.items())]
    return "\n".join(lines)
