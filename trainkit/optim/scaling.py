"""Learning rate scaled to the real global batch of the run (``model.lr_scaling``).

``{rule: linear|sqrt|none, base_batch_size: 256}``: the recipe's lr is the lr for a global
batch of ``base_batch_size``; the run uses ``lr * (global / base)`` (linear, Goyal et al. 2017)
or ``lr * sqrt(global / base)`` (sqrt, Krizhevsky 2014). The global batch is read from the
running trainer, so torchrun, SLURM and local runs of one recipe agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from trainkit.errors import ConfigError

RULES = ("none", "linear", "sqrt")
KEY = "model.lr_scaling"


@dataclass(frozen=True)
class GlobalBatch:
    """Samples per optimizer step over all processes."""

    per_device: int
    devices: int
    nodes: int
    accumulate: int

    @property
    def size(self) -> int:
        return self.per_device * self.devices * self.nodes * self.accumulate

    def __str__(self) -> str:
        plural = lambda n, word: f"{n} {word}" + ("s" if n != 1 else "")  # noqa: E731
        return (
            f"global batch {self.size} = {self.per_device} x {plural(self.devices, 'device')} x "
            f"{plural(self.nodes, 'node')} x {self.accumulate} accum"
        )


def check_lr_scaling(spec: dict[str, Any] | None) -> tuple[str, int]:
    """Validate ``model.lr_scaling`` and return ``(rule, base_batch_size)``.

    >>> check_lr_scaling({"rule": "sqrt", "base_batch_size": 128})
    ('sqrt', 128)
    >>> check_lr_scaling(None)
    ('none', 256)
    """
    spec = dict(spec or {})
    rule = spec.pop("rule", "none")
    base = spec.pop("base_batch_size", 256)
    if spec:
        raise ConfigError(f"unknown key(s) {', '.join(map(repr, spec))} (valid: rule, base_batch_size)", KEY)
    if rule not in RULES:
        raise ConfigError(f"unknown rule {rule!r} (valid: {', '.join(RULES)})", f"{KEY}.rule")
    if isinstance(base, bool) or not isinstance(base, int) or base < 1:
        raise ConfigError(f"must be an integer >= 1, got {base!r}", f"{KEY}.base_batch_size")
    return rule, base


def lr_factor(rule: str, global_batch: int, base_batch_size: int) -> float:
    """The multiplier of the recipe's lr.

    >>> lr_factor("linear", 1024, 256), lr_factor("sqrt", 1024, 256), lr_factor("none", 1024, 256)
    (4.0, 2.0, 1.0)
    """
    ratio = global_batch / base_batch_size
    return {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]


def global_batch(trainer: Any) -> GlobalBatch:
    """The global batch of a running Lightning trainer (its data module's or loader's batch size)."""
    per_device = getattr(trainer.datamodule, "batch_size", None) if trainer.datamodule is not None else None
    if per_device is None:
        per_device = trainer.train_dataloader.batch_size
    return GlobalBatch(int(per_device), trainer.num_devices, trainer.num_nodes, trainer.accumulate_grad_batches)


def plan(batch: GlobalBatch, lr: float, rule: str, base_batch_size: int) -> tuple[float, str]:
    """The scaled lr and the one-line plan printed at start.

    >>> plan(GlobalBatch(128, 8, 1, 1), 0.1, "linear", 256)[1]
    'global batch 1024 = 128 x 8 devices x 1 node x 1 accum; lr 0.1 -> 0.4 (linear, base 256)'
    """
    scaled = lr * lr_factor(rule, batch.size, base_batch_size)
    how = f"{rule}, base {base_batch_size}" if rule != "none" else "no scaling"
    return scaled, f"{batch}; lr {lr:.6g} -> {scaled:.6g} ({how})"
