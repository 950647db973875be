"""Snapshot ensembles (Huang et al. 2017): with ``model.schedule: {name: cosine_restarts, ...}``
a checkpoint ``checkpoints/snapshot-<k>.ckpt`` is saved at the end of each cosine cycle, where the
lr reaches its minimum; ``trainkit test --ensemble snapshots`` averages their softmax outputs
(:mod:`trainkit.ensemble`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from trainkit.optim.configure import check_schedule, step_clock, total_steps


def cycle_ends(T_0: float, T_mult: float, until: float) -> list[float]:
    """Ends of the cosine cycles (in schedule units) up to ``until``.

    >>> cycle_ends(2, 2, 14)
    [2, 6, 14]
    """
    ends, end, period = [], T_0, T_0
    while end <= until + 1e-9:
        ends.append(end)
        period *= T_mult
        end += period
    return ends


class Snapshots(Callback):
    """Save ``<dirpath>/snapshot-<k>.ckpt`` at the optimizer step where cycle ``k`` ends.

    Args:
        dirpath: the run dir's ``checkpoints/``.
        schedule: the ``model.schedule`` spec (cosine_restarts).
    """

    def __init__(self, dirpath: Path, schedule: dict[str, Any]):
        self.dirpath = Path(dirpath)
        self.spec = check_schedule(schedule)
        self.ends: list[int] = []

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the schedule's own clock (trainkit.optim.configure): epochs of a batch ramp are shorter
        spec, clock = self.spec, step_clock(trainer)
        warmup = int(round(spec["warmup_steps"] + clock.steps(spec["warmup_epochs"])))
        start, last = clock.epochs(warmup), total_steps(trainer, clock)
        if spec["unit"] == "step":
            ends = cycle_ends(spec["T_0"], spec.get("T_mult", 1.0), last - warmup)
            self.ends = [warmup + int(round(e)) for e in ends]
        else:
            ends = cycle_ends(spec["T_0"], spec.get("T_mult", 1.0), clock.epochs(last) - start)
            self.ends = [int(round(clock.steps(start + e))) for e in ends]

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.global_step in self.ends and not trainer.fast_dev_run:
            k = self.ends.index(trainer.global_step) + 1
            trainer.save_checkpoint(self.dirpath / f"snapshot-{k}.ckpt")


def snapshot_paths(checkpoints: Path) -> list[Path]:
    """The run's snapshots in cycle order."""
    return sorted(Path(checkpoints).glob("snapshot-*.ckpt"), key=lambda p: int(p.stem.split("-")[1]))
