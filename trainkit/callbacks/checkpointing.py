"""``last.ckpt``: the checkpoint every resume starts from, kept current, and preemption.

Lightning 2.6's ``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` only when a top-k
checkpoint is written in the same step, so with ``save_top_k=1`` it goes stale as soon as the
monitored metric stops improving. trainkit keeps ``best.ckpt`` with ModelCheckpoint and
writes ``last.ckpt`` itself: at every epoch end, optionally every N optimizer steps, and when
SIGUSR1 arrives. Lightning writes checkpoints through an fsspec transaction (a temporary file
renamed into place), so a killed process leaves the previous ``last.ckpt`` loadable.

SIGUSR1 is SLURM's warning before a time limit (``#SBATCH --signal=USR1@90``) or a preemption
(``scancel --signal=USR1``), sent to every task. The handler, installed when the process starts
(:mod:`trainkit.preemption`), only records it; at the next batch boundary the ranks agree (any
rank flagged) and save ``last.ckpt`` mid-epoch (the train loader's position is in it, see
``trainkit.data.loader``). At the next hook (the step's metrics logged by then) training ends
with :class:`~trainkit.preemption.Preempted`, before the partial epoch would be validated;
global rank zero flushes the loggers and finishes the W&B run (the requeue kills the tasks at
once: whatever is not on disk by then is lost) and asks SLURM to requeue the job. A signal during start-up is acted on at the first batch.

SIGTERM (a kill, ``scancel``, a time limit reached, torchrun stopping its workers) goes through
the same vote and stops the same way, without a requeue, instead of Lightning's per-step
broadcast (:func:`take_over_sigterm`). The ranks agree without stalling a step: each step
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
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from typing_extensions import override

from trainkit.preemption import PREEMPTION, Preempted, PreemptionSignal

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
    when the preemption signal arrives (then requeue under SLURM and stop).

    A ``Checkpoint`` subclass, so Lightning orders it with (after) the ModelCheckpoint that keeps
    ``best.ckpt``: the epoch-end ``last.ckpt`` then holds that epoch's best-checkpoint state
    (path and score); saved before it, a resumed run compared against a stale best and wrote
    ``best-v1.ckpt`` beside ``best.ckpt``.

    Args:
        path: the run dir's ``checkpoints/last.ckpt``.
        every_n_steps: also save mid-epoch every this many steps (None: epoch ends only).
        preemption: the process's preemption signal (:data:`trainkit.preemption.PREEMPTION`).
    """

    def __init__(self, path: Path, every_n_steps: int | None = None, preemption: PreemptionSignal = PREEMPTION):
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.path = Path(path)
        self.every_n_steps = every_n_steps
        self.preemption = preemption
        self.preempted = False
        self._stopping = False  # the ranks agreed to stop (at this batch or at the epoch's end)
        self._where = ""
        self._handed_over = False
        self.stopped_by: int | None = None  # the signal the ranks agreed on (SIGTERM outvotes SIGUSR1)
        self._sigterm = False
        self._saved_at = -1
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

    def _handle_sigterm(self, signum: int, frame: Any) -> None:
        # only a flag, as for SIGUSR1: the vote acts on it at the next batch boundary
        self._sigterm = True

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.preemption.install()  # trainkit's CLI did at start; a library user's Trainer may not have
        self._any_rank.start()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        take_over_sigterm(trainer, self._handle_sigterm)  # SIGTERM: save and stop, through the same vote

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        last_batch = batch_idx + 1 >= trainer.num_training_batches
        # every rank must take the same decision at the same step, or the collective save hangs;
        # the vote carries the signal (SIGTERM outvotes SIGUSR1: a kill is not requeued)
        flag = signal.SIGTERM if self._sigterm else self.preemption.signum if self.preemption.received else 0
        decided = 0 if self._stopping else self._any_rank(int(flag))
        if decided:
            self._stopping, self.stopped_by = True, decided
            if not last_batch:
                self._preempt(trainer)
            # else this batch ends the epoch: it is validated and saved as every epoch is (on
            # Lightning's resume from a checkpoint of an epoch's last batch, the epoch's validation
            # and epoch end would be skipped), and training stops before the next batch
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
        self._where = f"{self.path} at epoch {trainer.current_epoch}, global step {trainer.global_step}"
        # the requeue ends every task with SIGTERM; everything is saved, so the default action
        # (end now) is right. Lightning's own handler would broadcast the signal over a process
        # group whose other members are dying and print a traceback into the job's log.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def _stop(self) -> None:
        # at the hook after the saved step: its metrics have been handed to the loggers by now
        if self.preempted:
            raise Preempted(self._where)

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._stop()

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop()  # preempted mid-epoch: keep the mid-epoch checkpoint just saved
        if self._stopping:  # the signal came at the epoch's last batch: its end is the checkpoint
            self._preempt(trainer)
        elif not trainer.fast_dev_run:
            self.save(trainer)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, Preempted):  # raised on every rank at the same step
            self._any_rank.stop()  # (on_fit_end does not come after an exception)
            self._hand_over(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.preempted:  # the saved step was the run's last one: training ended by itself
            self._hand_over(trainer)

    def _hand_over(self, trainer: pl.Trainer) -> None:
        """Rank zero: flush the loggers and W&B, then ask SLURM to requeue the job."""
        if not trainer.is_global_zero or self._handed_over:
            return
        self._handed_over = True
        flush_loggers(trainer)
        name = signal.Signals(self.stopped_by or self.preemption.signum).name
        job = slurm_job_id()
        if self.stopped_by == signal.SIGTERM:  # a kill, scancel, the time limit itself: not requeued
            log.warning("%s received: checkpoint saved to %s; loggers flushed; stopping: the same command "
                        "resumes from this checkpoint", name, self._where)
        elif job:
            log.warning("%s received: checkpoint saved to %s; loggers flushed; requeueing SLURM job %s, "
                        "which resumes from this checkpoint", name, self._where, job)
            subprocess.run(["scontrol", "requeue", job], check=False)
        else:
            log.warning("%s received: checkpoint saved to %s; stopping (not a SLURM job, nothing to requeue): "
                        "the same command resumes from this checkpoint", name, self._where)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._any_rank.stop()
        # the handler stays: a signal after training must not kill the job's last steps


def flush_loggers(trainer: pl.Trainer) -> None:
    """Write out what every logger holds and finish the W&B run, then drop its logger.

    ``scontrol requeue`` kills the tasks at once, W&B's service with them: history it had not
    written yet was lost (a run stopped at step 150 of 199). Finishing the run writes everything;
    the requeued job continues the same run id. Lightning must not log to the finished run.
    """
    for logger in trainer.loggers:
        logger.save()
    import wandb

    if wandb.run is not None:
        wandb.run.finish()
        trainer.loggers = [lg for lg in trainer.loggers if not isinstance(lg, WandbLogger)]


class BestCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose state names its files relative to its directory.

    ``ModelCheckpoint`` stores ``dirpath`` and ``best_model_path`` as absolute paths, and on
    resume restores its scores only if ``dirpath`` is unchanged: a run dir that was copied or
    moved then resumed into ``best-v1.ckpt`` while ``trainkit test`` still read ``best.ckpt``.
    Here every path in the state is relative to ``dirpath`` (``"."``), and a state with absolute
    paths (older checkpoints, a moved dir) is rebased onto the current directory, so a run dir
    works wherever it lies.
    """

    @property
    @override
    def state_key(self) -> str:
        # the key Lightning gives ModelCheckpoint: states saved before this class existed still load
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        base = Path(self.dirpath) if self.dirpath else None

        def rel(p: Any) -> Any:
            return os.path.relpath(p, base) if base is not None and p and Path(p).is_absolute() else p

        return {**state, "dirpath": ".", "best_model_path": rel(state["best_model_path"]),
                "kth_best_model_path": rel(state["kth_best_model_path"]), "last_model_path": rel(state["last_model_path"]),
                "best_k_models": {rel(k): v for k, v in state["best_k_models"].items()}}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.dirpath:
            saved = state_dict.get("dirpath") or "."

            def here(p: Any) -> Any:
                if not p:
                    return p
                if not Path(p).is_absolute():
                    return str(Path(self.dirpath) / p)
                # an absolute path under the saved dirpath (a moved dir): the same file here
                return str(Path(self.dirpath) / os.path.relpath(p, saved)) if saved != "." and Path(p).is_relative_to(saved) else p

            state_dict = {**state_dict, "dirpath": self.dirpath, "best_model_path": here(state_dict.get("best_model_path")),
                          "kth_best_model_path": here(state_dict.get("kth_best_model_path")),
                          "last_model_path": here(state_dict.get("last_model_path")),
                          "best_k_models": {here(k): v for k, v in state_dict.get("best_k_models", {}).items()}}
        super().load_state_dict(state_dict)
