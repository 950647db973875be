"""``last.ckpt``: the checkpoint every resume starts from, kept current, and preemption.

Lightning 2.6's ``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` only when a top-k
checkpoint is written in the same step, so with ``save_top_k=1`` it goes stale as soon as the
monitored metric stops improving. trainkit keeps ``best.ckpt`` with ModelCheckpoint and
writes ``last.ckpt`` itself: at every epoch end, optionally every N optimizer steps, and when
SIGUSR1 arrives. Lightning writes checkpoints through an fsspec transaction (a temporary file
renamed into place), so a killed process leaves the previous ``last.ckpt`` loadable.

SIGUSR1 is SLURM's warning before a time limit (``#SBATCH --signal=USR1@90``) or a preemption
(``scancel --signal=USR1``), sent to every task. Each rank only sets a flag in the handler; at
the next batch boundary the ranks agree (any rank flagged), save ``last.ckpt`` mid-epoch (the
train loader's position is in it, see ``trainkit.data.loader``), global rank zero asks SLURM to
requeue the job, and training stops. SIGTERM (a kill, ``scancel``, a time limit reached, torchrun
stopping its workers) goes through the same vote and stops the same way, without a requeue,
instead of Lightning's per-step broadcast (:func:`take_over_sigterm`). The ranks agree without stalling a step: each step
all-reduces the flags asynchronously and reads the previous step's result (:class:`AnyRank`), so
the save comes one step after the signal. The requeued job runs the same command with the same
job id, so ``resume: auto`` finds the run dir and continues with the batches not yet seen.
Lightning's own SLURM auto-requeue is switched off instead: it saves ``hpc_ckpt_N`` from
inside the signal handler (reported to hang or corrupt, Lightning issue 21406) and its
``ckpt_path="hpc"`` fails on a first run (20347); one resume path serves all three starts.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any, Mapping

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Checkpoint
from typing_extensions import override

log = logging.getLogger(__name__)


def slurm_job_id(env: Mapping[str, str] = os.environ) -> str | None:
    """The id ``scontrol requeue`` takes (array tasks are ``<array job>_<task>``).

    >>> slurm_job_id({"SLURM_JOB_ID": "12"}), slurm_job_id({"SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "2"})
    ('12', '7_2')
    """
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


class AnyRank:
    """Whether any rank raised a flag, decided alike on every rank, one call late.

    A flag is an int (a bool, or a signal number: the decision is the largest flag raised).

    Each call starts an all-reduce of this rank's flag on a CPU (gloo) group of its own and
    returns the previous call's result, so the collective runs during the step in between.
    A blocking reduction (Lightning's ``reduce_boolean_decision``) costs a round trip on every
    step, and under NCCL a device sync as well. One process: the flag itself, at once.
    """

    def __init__(self) -> None:
        self._group: Any = None
        self._work: Any = None
        # the flag lives in host memory that gloo reduces in place: the result is read as bytes,
        # never through a tensor method (host memory: nothing to wait for on any device)
        self._buffer = bytearray(8)
        self._flag = torch.frombuffer(self._buffer, dtype=torch.int64)

    def start(self) -> None:
        """Create the group: every rank calls it, at the same point (a collective)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            self._group = dist.new_group(backend="gloo")

    def __call__(self, flag: int) -> int:
        if self._group is None:
            return int(flag)
        decided = 0
        if self._work is not None:
            self._work.wait()
            decided = int.from_bytes(self._buffer, "little", signed=True)
        self._flag.fill_(int(flag))
        self._work = dist.all_reduce(self._flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        return decided

    def stop(self) -> None:
        """Finish the reduction in flight and free the group (every rank)."""
        if self._work is not None:
            self._work.wait()
            self._work = None
        if self._group is not None:
            dist.destroy_process_group(self._group)
            self._group = None


def take_over_sigterm(trainer: pl.Trainer, handler: Any) -> None:
    """Let SIGTERM reach ``handler`` (a flag for :class:`AnyRank`'s vote) instead of Lightning.

    Under DDP Lightning broadcasts a SIGTERM flag from rank 0 and reads it back on every
    training step (``_broadcast_sigterm_tensor`` of its training epoch loop, from Lightning
    PR 20825): a blocking collective per step, and a host-device sync per step on GPUs
    (Lightning issue 21487; PR 21640 would add an interval, unmerged). Its SIGTERM handler
    broadcasts too, from inside the handler, which would pair with no other rank's call once the
    per-step one is gone. Lightning has no public switch for either, so the per-step broadcast
    is switched off on this trainer's loop instance (the one private name trainkit touches here)
    and SIGTERM gets ``handler``, installed in ``on_train_start``, after Lightning registered its
    own (its teardown restores the process's original handler). The vote then stops every rank
    at the same step, one step after the signal, whichever rank received it.
    """
    if trainer.world_size > 1:
        trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor = lambda: None  # Lightning issue 21487
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


class LastCheckpoint(Checkpoint):
    """Save ``path`` at every training epoch end, every ``every_n_steps`` optimizer steps, and
    on ``signum`` (then requeue under SLURM and stop).

    A ``Checkpoint`` subclass, so Lightning orders it with (after) the ModelCheckpoint that keeps
    ``best.ckpt``: the epoch-end ``last.ckpt`` then holds that epoch's best-checkpoint state
    (path and score); saved before it, a resumed run compared against a stale best and wrote
    ``best-v1.ckpt`` beside ``best.ckpt``.

    Args:
        path: the run dir's ``checkpoints/last.ckpt``.
        every_n_steps: also save mid-epoch every this many steps (None: epoch ends only).
        signum: the preemption signal.
    """

    def __init__(self, path: Path, every_n_steps: int | None = None, signum: int = signal.SIGUSR1):
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.path = Path(path)
        self.every_n_steps = every_n_steps
        self.signum = signum
        self.received = False
        self.received_signal: int | None = None  # the first of signum / SIGTERM that arrived
        self.preempted = False
        self._preempt_at_epoch_end = False
        self._saved_at = -1
        self._previous_handler: Any = None
        self._any_rank = AnyRank()

    def save(self, trainer: pl.Trainer) -> None:
        """Save now (all ranks call it; rank zero writes). The checkpoint it replaces is kept
        as ``previous.ckpt``: a resume falls back to it if ``last.ckpt`` is unreadable (or, after
        a kill between the two renames, missing). The new one is written first, beside it: a
        save refused on the way (the NaN guard's check) leaves ``last.ckpt`` as it was."""
        partial = self.path.with_name(self.path.name + ".partial")
        # a full checkpoint (optimizer, loops, callbacks): said, so Lightning does not log its default
        trainer.save_checkpoint(partial, weights_only=False)
        if trainer.is_global_zero:
            if self.path.exists():
                os.replace(self.path, self.path.with_name("previous.ckpt"))
            os.replace(partial, self.path)
        self._saved_at = trainer.global_step

    def _handle(self, signum: int, frame: Any) -> None:
        # only a flag: saving from inside a signal handler can deadlock on locks the step holds
        self.received = True
        self.received_signal = self.received_signal or signum

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._previous_handler = signal.signal(self.signum, self._handle)
        self._any_rank.start()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        take_over_sigterm(trainer, self._handle)  # SIGTERM: save and stop, through the same vote

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        last_batch = args[-1] + 1 >= trainer.num_training_batches
        # every rank must take the same decision at the same step, or the collective save hangs;
        # the vote carries the signal (SIGTERM outvotes SIGUSR1: a kill is not requeued)
        decided = self._any_rank(self.received_signal or int(self.received))
        if decided:
            self.received_signal = decided if decided > 1 else self.received_signal
            if last_batch:  # saved at the epoch end instead (see below), right after validation
                self._preempt_at_epoch_end = trainer.should_stop = True
                return
            self._preempt(trainer)
            return
        n = self.every_n_steps
        # Not at an epoch's last batch: the epoch-end save follows after validation. Lightning
        # 2.6 restores a checkpoint taken there as "epoch done" yet still as a mid-epoch restart,
        # so the next epoch's progress counters stay one behind; every later mid-epoch
        # checkpoint of that run then looks finished, is restored without the loader position
        # and replays its epoch from the start (extra steps after a second resume, issue 18).
        if n and trainer.global_step % n == 0 and trainer.global_step != self._saved_at and not last_batch:
            self.save(trainer)

    def _preempt(self, trainer: pl.Trainer) -> None:
        self.save(trainer)
        self.preempted = True
        trainer.should_stop = True
        # SIGTERM (a kill, scancel, the time limit itself) stops without requeueing
        job = slurm_job_id() if self.received_signal in (None, self.signum) else None
        if trainer.is_global_zero and job:
            log.warning("signal %d: checkpoint saved to %s; requeueing SLURM job %s", self.signum, self.path, job)
            subprocess.run(["scontrol", "requeue", job], check=False)
        elif trainer.is_global_zero:
            log.warning("signal %d: checkpoint saved to %s; stopping", self.received_signal or self.signum, self.path)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._preempt_at_epoch_end:
            self._preempt(trainer)
            return
        # after a preemption the epoch "ends" early: keep the mid-epoch checkpoint just saved
        if not trainer.fast_dev_run and not self.preempted:
            self.save(trainer)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._any_rank.stop()
        if self._previous_handler is not None:
            signal.signal(self.signum, self._previous_handler)
