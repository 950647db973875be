"""trainkit: recipe YAML files in, Lightning training runs out (laptop, torchrun, SLURM).

The public names load lazily, so ``import trainkit`` (and ``trainkit --help``) stays quick.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Classifier": "trainkit.module",
    "DataModule": "trainkit.data.datamodule",
    "ConfigError": "trainkit.errors",
    "Registry": "trainkit.registry",
    "run": "trainkit.runner",
    "main": "trainkit.cli",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trainkit' has no attribute {name!r}")
