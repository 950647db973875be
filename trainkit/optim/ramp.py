"""Batch-size ramp (``data.batch_ramp``): grow the batch at milestones instead of decaying the lr.

Smith et al. 2017, "Don't decay the learning rate, increase the batch size": multiplying the
batch by ``factor`` at an epoch milestone lowers the gradient noise as an lr cut by ``factor``
would, with fewer optimizer steps. ``{milestones: [10, 15], factor: 2}`` trains with the
recipe's batch, then twice it from epoch 10, four times from epoch 15.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any

from trainkit.errors import ConfigError

KEY = "data.batch_ramp"


def check_batch_ramp(spec: dict[str, Any] | None) -> tuple[list[int], int] | None:
    """Validate ``data.batch_ramp``; ``(milestones, factor)`` or ``None`` when off.

    >>> check_batch_ramp({"milestones": [5, 2]})
    ([2, 5], 2)
    """
    if spec is None:
        return None
    spec = dict(spec)
    milestones, factor = spec.pop("milestones", None), spec.pop("factor", 2)
    if spec:
        raise ConfigError(f"unknown key(s) {', '.join(map(repr, spec))} (valid: milestones, factor)", KEY)
    if not isinstance(milestones, list) or not milestones or not all(isinstance(m, int) and m > 0 for m in milestones):
        raise ConfigError(f"milestones must be a list of epochs > 0, got {milestones!r}", f"{KEY}.milestones")
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
        raise ConfigError(f"must be an integer >= 2, got {factor!r}", f"{KEY}.factor")
    return sorted(milestones), factor


def ramped_batch_size(batch_size: int, milestones: list[int], factor: int, epoch: int) -> int:
    """The per-device batch of ``epoch``.

    >>> [ramped_batch_size(32, [2, 4], 2, e) for e in range(6)]
    [32, 32, 64, 64, 128, 128]
    """
    return batch_size * factor ** bisect_right(milestones, epoch)
