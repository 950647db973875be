"""Checkpoint-and-requeue on SIGUSR1: SLURM's warning before a time limit or a preemption.

SLURM sends the signal (``#SBATCH --signal=USR1@90`` or ``scancel --signal=USR1``) to every
task. Each rank only sets a flag in the handler; at the next batch boundary the ranks agree
(any rank flagged), save ``last.ckpt`` through the normal (atomic) checkpoint path, global
rank zero asks SLURM to requeue the job, and training stops. The requeued job starts with the
same command and the same job id, so ``resume: auto`` finds the run dir and continues.

Lightning's own SLURM auto-requeue is switched off instead of used: it saves ``hpc_ckpt_N``
from inside the signal handler (reported to hang or corrupt, Lightning issue 21406) and its
``ckpt_path="hpc"`` fails on a first run (20347); one resume path serves first start,
restart and requeue.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

log = logging.getLogger(__name__)


def slurm_job_id(env: Any = os.environ) -> str | None:
    """The id ``scontrol requeue`` takes (array tasks are ``<array job>_<task>``)."""
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


class Preemption(Callback):
    """Save ``last.ckpt`` and requeue (under SLURM) when SIGUSR1 arrives.

    Args:
        checkpoint: where to save (the run dir's ``checkpoints/last.ckpt``).
        signum: the signal to handle.
    """

    def __init__(self, checkpoint: Path, signum: int = signal.SIGUSR1):
        self.checkpoint = Path(checkpoint)
        self.signum = signum
        self.received = False
        self.preempted = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        # only a flag: saving from inside a signal handler can deadlock on locks held by the step
        self.received = True

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._previous = signal.signal(self.signum, self._handle)

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        # every rank must take the same decision at the same step, or the collective save hangs
        if not trainer.strategy.reduce_boolean_decision(self.received, all=False):
            return
        trainer.save_checkpoint(self.checkpoint)
        self.preempted = True
        trainer.should_stop = True
        job = slurm_job_id()
        if trainer.is_global_zero and job:
            log.warning("signal %d: checkpoint saved to %s; requeueing SLURM job %s", self.signum, self.checkpoint, job)
            subprocess.run(["scontrol", "requeue", job], check=False)
        elif trainer.is_global_zero:
            log.warning("signal %d: checkpoint saved to %s; stopping", self.signum, self.checkpoint)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
