"""Callbacks that plant faults in a real run, given to it as a user adds callbacks
(``--trainer.callbacks+={class_path: planted.NaNAt, init_args: {step: 7}}``, tests/ on the path)."""

from __future__ import annotations

import math
from typing import Any

from lightning.pytorch import Callback


class NaNAt(Callback):
    """Put a NaN into the first input of the training batch of optimizer step ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            batch[0].view(len(batch[0]), -1)[0, 0] = math.nan


class SignalAt(Callback):
    """Send ``signum`` to this process at the end of optimizer step ``step`` on global rank
    ``rank`` only; every rank writes the step it stopped at to ``<out>.rank<r>``."""

    def __init__(self, step: int, rank: int, out: str, signum: int = 15):
        self.step, self.rank, self.out, self.signum = step, rank, out, signum

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        import os

        if trainer.global_step == self.step and trainer.global_rank == self.rank:
            os.kill(os.getpid(), self.signum)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        from pathlib import Path

        Path(f"{self.out}.rank{trainer.global_rank}").write_text(str(trainer.global_step))

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        # a signal ends training with trainkit.preemption.Preempted (no on_fit_end after it)
        self.on_fit_end(trainer, pl_module)


class SaveOnException(Callback):
    """Save the in-memory model and optimizer state to ``path`` when the fit raises."""

    def __init__(self, path: str):
        self.path = path

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        import torch

        torch.save({"state_dict": pl_module.state_dict(), "optimizer": trainer.optimizers[0].state_dict(),
                    "global_step": trainer.global_step}, self.path)


class AveragedDevice(Callback):
    """At the end of training, write the devices of the EMA/SWA copy and of the module to ``out``."""

    def __init__(self, out: str):
        self.out = out

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        import json
        from pathlib import Path

        from trainkit.callbacks.averaging import WeightAveraging

        avg = next(c for c in trainer.callbacks if isinstance(c, WeightAveraging))
        module = avg.averaged.module
        tensors = [*module.parameters(), *module.buffers(), avg.averaged.n_averaged]
        Path(self.out).write_text(json.dumps({"copy": sorted({str(t.device) for t in tensors}),
                                              "module": str(pl_module.device), "n": avg.n,
                                              "n_averaged": int(avg.averaged.n_averaged)}))
