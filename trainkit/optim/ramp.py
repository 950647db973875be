"""Batch-size ramp (``data.batch_ramp``): grow the batch at milestones instead of decaying the lr.

Smith et al. 2017, "Don't decay the learning rate, increase the batch size": multiplying the
batch by ``factor`` at an epoch milestone lowers the gradient noise as an lr cut by ``factor``
would, with fewer optimizer steps. ``{milestones: [10, 15], factor: 2}`` trains with the
recipe's batch, then twice it from epoch 10, four times from epoch 15.

Epochs then have fewer optimizer steps as the batch grows, so a schedule with a length
(cosine, polynomial, onecycle) is planned on a :class:`StepClock` built from the ramped epochs'
real step counts: it ends where the run ends, with ``unit: step`` and ``unit: epoch`` alike.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate
from typing import Any, Sequence

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


def ramped_batches(batches: int, milestones: list[int], factor: int, epoch: int) -> int:
    """Batches of ``epoch`` when an epoch at the recipe's batch has ``batches``: the split is
    ``n`` samples, ``batches = ceil(n / b)``, and ``ceil(ceil(n / b) / f) = ceil(n / (b f))``.

    >>> [ramped_batches(40, [2, 4], 2, e) for e in range(6)]
    [40, 40, 20, 20, 10, 10]
    """
    return -(-batches // factor ** bisect_right(milestones, epoch))


class StepClock:
    """Optimizer steps and (fractional) epochs, when epochs have different numbers of steps.

    Args:
        steps: optimizer steps of epochs ``0, 1, ...``; the last one repeats for every later
            epoch (after a ramp's last milestone the batch stays the same).

    >>> clock = StepClock([40, 40, 20])
    >>> clock.epochs(0), clock.epochs(60), clock.epochs(90), clock.epochs(120)
    (0.0, 1.5, 2.5, 4.0)
    >>> clock.steps(1.5), clock.steps(4.0)
    (60.0, 120.0)
    """

    def __init__(self, steps: Sequence[int]):
        assert steps and all(s > 0 for s in steps), "every epoch has a step"
        self.per_epoch = list(steps)
        self.starts = [0, *accumulate(self.per_epoch)][:-1]  # first step of each listed epoch

    def epochs(self, step: float) -> float:
        """Epochs done after ``step`` optimizer steps."""
        i = min(bisect_right(self.starts, step) - 1, len(self.per_epoch) - 1)
        return i + (step - self.starts[i]) / self.per_epoch[i]

    def steps(self, epochs: float) -> float:
        """Optimizer steps after ``epochs`` (fractional) epochs."""
        i = min(int(epochs), len(self.per_epoch) - 1)
        return self.starts[i] + (epochs - i) * self.per_epoch[i]
