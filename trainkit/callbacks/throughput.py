"""Steady-state training throughput (``perf/train_samples_per_s`` in a fit's metrics.json)."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

KEY = "perf/train_samples_per_s"


class Throughput(Callback):
    """Training samples per second over all ranks, the first epoch of the fit excluded.

    An epoch's time runs from its start to its last training batch (so validation and
    checkpointing are not counted, data loading is). The first epoch pays for warm-up (worker
    start, allocator, caches) and is left out, unless it is the only one.
    """

    def __init__(self) -> None:
        self.first_epoch: int | None = None
        self._start = self._last = 0.0
        self._samples = 0
        self.epochs: list[tuple[int, int, float]] = []  # (epoch, samples on this rank, seconds)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.first_epoch is None:
            self.first_epoch = trainer.current_epoch
        self._samples = 0
        self._start = self._last = time.perf_counter()

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        self._samples += len(x) if isinstance(x, torch.Tensor) else 0
        self._last = time.perf_counter()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._samples:
            self.epochs.append((trainer.current_epoch, self._samples * trainer.world_size, self._last - self._start))

    def samples_per_s(self) -> float | None:
        """Global samples/s of the steady epochs (all epochs if only the first one ran)."""
        steady = [e for e in self.epochs if e[0] != self.first_epoch] or self.epochs
        seconds = sum(e[2] for e in steady)
        return sum(e[1] for e in steady) / seconds if seconds > 0 else None


def throughput_record(trainer: pl.Trainer) -> dict[str, float]:
    """``{perf/train_samples_per_s: value}`` of the trainer's :class:`Throughput`, if it measured one."""
    from trainkit.callbacks.group import find

    meter = find(trainer, Throughput)
    value = meter.samples_per_s() if meter is not None else None
    return {KEY: float(value)} if value else {}
