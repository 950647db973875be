"""SIGUSR1 at any moment of a job: SLURM's warning before the time limit (``#SBATCH
--signal=USR1@90``) or a preemption (``scancel --signal=USR1``).

The handler is installed when the process starts (:func:`trainkit.cli.main`), so a signal
that arrives during start-up (parsing, loading data, before ``Trainer.fit``) is kept instead
of killing the process (exit 138); one that arrives before even that, while the interpreter
starts, is held pending by the launcher's signal mask and delivered once the handler is in. It only records the signal: training acts on it at the
next batch boundary (:class:`trainkit.callbacks.checkpointing.LastCheckpoint` saves, requeues
and stops), and a signal after training has ended lets the job finish its last steps. It is
installed with ``SA_RESTART`` semantics, so a system call it interrupts (a gloo socket read, a
file write) resumes instead of failing with EINTR and taking the process group down.

A signal's disposition is process-wide, so the one handler and what it recorded live here
(:data:`PREEMPTION`) rather than in a callback instance.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any


class PreemptionSignal:
    """Records the first arrival of ``signum`` in this process."""

    def __init__(self, signum: int = signal.SIGUSR1):
        self.signum = signum
        self.received_at: float | None = None
        self.installed = False

    @property
    def name(self) -> str:
        """``SIGUSR1``, not ``10``."""
        return signal.Signals(self.signum).name

    @property
    def received(self) -> bool:
        return self.received_at is not None

    def install(self) -> None:
        """Install the handler (idempotent; only the main thread can)."""
        if self.installed or threading.current_thread() is not threading.main_thread():
            return
        signal.signal(self.signum, self._handle)
        signal.siginterrupt(self.signum, False)  # SA_RESTART: interrupted system calls resume
        # the sbatch script starts tasks with the signal blocked (`env --block-signal`), so one
        # that came before this point is pending, not lost: it is delivered now
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {self.signum})
        self.installed = True

    def _handle(self, signum: int, frame: Any) -> None:
        # only a flag: acting from inside a signal handler can deadlock on locks the step holds
        if self.received_at is None:
            self.received_at = time.monotonic()

    def clear(self) -> None:
        """Forget an arrival (it has been acted on, or the run it concerned is over)."""
        self.received_at = None


PREEMPTION = PreemptionSignal()


class Preempted(Exception):
    """Raised inside ``Trainer.fit`` once the preemption checkpoint is saved and the step it
    ends with is logged: it ends training at once, before the partial epoch is validated (a
    stop through ``trainer.should_stop`` validates first, which takes time the job may not have
    and lets ``best.ckpt`` be overwritten by weights from the middle of an epoch)."""
