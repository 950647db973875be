"""Steady-state training throughput (``perf/train_samples_per_s`` in a fit's metrics.json)."""

from __future__ import annotations

import time
from typing import Any, Callable

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

KEY = "perf/train_samples_per_s"


class Throughput(Callback):
    """Training samples per second over all ranks, in this process's steady state.

    Time is measured between training batches only, in *segments*: a segment runs from the end
    of its first batch to the end of its last, so loader start-up (worker start, the skip to a
    resumed position) and validation are outside it. A segment ends with the epoch or when
    validation starts; the next batch starts a new one. No epoch-start hook is needed, which
    matters after a resume: Lightning does not call ``on_train_epoch_start`` for an epoch it
    resumes mid-way or at its end. The first segment of the process pays for warm-up
    (allocator, caches) and is left out, unless it is the only one.

    Args:
        clock: seconds, monotonic (``time.perf_counter``); tests give a counter.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.segments: list[tuple[int, int, float]] = []  # (epoch, samples on this rank, seconds)
        self._epoch: int | None = None  # epoch of the open segment; None: no segment open
        self._start = self._last = 0.0
        self._samples = 0
        self._world = 1

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = self.clock()
        if self._epoch != trainer.current_epoch:
            self._close()
            self._epoch, self._start, self._samples = trainer.current_epoch, now, 0
        else:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            self._samples += len(x) if isinstance(x, torch.Tensor) else 0
        self._last, self._world = now, trainer.world_size

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()

    def _close(self) -> None:
        if self._epoch is not None and self._samples:
            self.segments.append((self._epoch, self._samples * self._world, self._last - self._start))
        self._epoch, self._samples = None, 0

    def samples_per_s(self) -> float | None:
        """Global samples/s of the steady segments (all of them if only one was measured)."""
        self._close()
        steady = self.segments[1:] or self.segments
        seconds = sum(s[2] for s in steady)
        return sum(s[1] for s in steady) / seconds if seconds > 0 else None


def throughput_record(trainer: pl.Trainer) -> dict[str, float]:
    """``{perf/train_samples_per_s: value}`` of the trainer's :class:`Throughput`, if it measured one."""
    from trainkit.callbacks.group import find

    meter = find(trainer, Throughput)
    value = meter.samples_per_s() if meter is not None else None
    return {KEY: float(value)} if value else {}
