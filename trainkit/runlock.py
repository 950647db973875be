"""The run-dir lock: one job writes a run dir at a time.

``<run dir>/.lock`` is a small JSON file naming its holder (pid, host, job, since). The job's
rank-0 process takes it before anything else is written to the run dir and removes it on
exit; the other ranks of the job (torchrun workers, srun tasks, the processes Lightning starts
for more devices) never take it, so they are not locked out. A lock left behind by a process
that died (SIGKILL, a node lost) is taken over with a message when its holder is known to be
gone: a process on this host that no longer runs, or an earlier start of the same SLURM job or
torchrun run (a requeue or a restart: the scheduler runs one instance of a job id at a time).
Any other holder refuses the run with :class:`ConfigError` (exit 2) naming it.

The lock file is created with ``link()``, atomic on local disks and NFS, so two jobs that
start together cannot both win; a take-over is serialized by a second, short-lived file.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

from trainkit.errors import ConfigError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


def launcher_rank(env: Mapping[str, str] = os.environ) -> int:
    """This process's rank as the launcher set it (0 when nothing launched it).

    torchrun sets RANK, srun SLURM_PROCID, Lightning's launcher LOCAL_RANK (and NODE_RANK for
    the other nodes). RANK wins: torchrun under srun leaves SLURM_PROCID at the node's task.

    >>> launcher_rank({}), launcher_rank({"RANK": "3", "SLURM_PROCID": "0"}), launcher_rank({"NODE_RANK": "1"})
    (0, 3, 1)
    """
    for key in ("RANK", "SLURM_PROCID"):
        if env.get(key, "").isdigit():
            return int(env[key])
    return int(env.get("LOCAL_RANK", "0") or 0) + int(env.get("NODE_RANK", "0") or 0)


def job_identity(env: Mapping[str, str] = os.environ) -> str | None:
    """The scheduler's name of this job, alike on every rank and every restart of it.

    >>> job_identity({"SLURM_JOB_ID": "42"}), job_identity({"TORCHELASTIC_RUN_ID": "abc"}), job_identity({})
    ('SLURM job 42', 'torchrun run abc', None)
    """
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"SLURM job {env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    if env.get("SLURM_JOB_ID"):
        return f"SLURM job {env['SLURM_JOB_ID']}"
    if env.get("TORCHELASTIC_RUN_ID", "none") != "none":
        return f"torchrun run {env['TORCHELASTIC_RUN_ID']}"
    return None


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name in parentheses may hold spaces


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return start is None or _start_time(pid) in (None, start)


@dataclass
class Holder:
    """Who holds a lock."""

    pid: int
    host: str
    job: str | None
    since: str
    start: str | None = None

    @classmethod
    def me(cls) -> "Holder":
        pid = os.getpid()
        return cls(pid, socket.gethostname(), job_identity(), time.strftime("%Y-%m-%d %H:%M:%S %z"), _start_time(pid))

    def describe(self) -> str:
        job = f", {self.job}" if self.job else ""
        return f"pid {self.pid} on host {self.host}{job}, since {self.since}"

    def gone_because(self, me: "Holder") -> str | None:
        """Why this holder is known to be gone (so its lock is stale), or None if it may run."""
        if self.host == me.host:
            if self.pid == me.pid and self.start == me.start:
                return "this process"
            if not _alive(self.pid, self.start):
                return "that process no longer runs"
            return None
        if self.job is not None and self.job == me.job:
            return f"an earlier start of {self.job} (requeued or restarted)"
        return None


class RunLock:
    """The lock of one run dir, held by this process between :meth:`acquire` and :meth:`release`.

    Args:
        run_dir: the run directory (made by :meth:`acquire` if missing).
        key: the recipe key named in errors (the run dir comes from ``run.root``/``run.name``).
    """

    def __init__(self, run_dir: Path, key: str = "run.name"):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.key = key
        self.holder = Holder.me()
        self.held = False
        self._made: list[Path] = []

    def acquire(self) -> "RunLock":
        """Take the lock, making the run dir if needed.

        Raises:
            ConfigError: another live job holds it (naming the holder), or the run dir cannot
                be made or written (naming ``run.root``).
        """
        self._make_dirs()
        text = json.dumps(asdict(self.holder)) + "\n"
        for _ in range(20):
            if self._link(self.path, text):
                self.held = True
                return self
            current = self._read()
            if current is None:  # removed or half-written between two looks: look again
                time.sleep(0.05)
                continue
            why = current.gone_because(self.holder)
            if why is None:
                self._remove_made_dirs()
                raise ConfigError(
                    f"run dir {str(self.run_dir)!r} is in use by another job: {current.describe()}. "
                    f"Wait for it to end, choose another --run.name, or delete {str(self.path)!r} if that job is gone",
                    self.key,
                )
            if self._take_over(current, text):
                log.warning("taking over the lock of %s: %s was held by %s (%s)",
                            self.run_dir, self.path.name, current.describe(), why)
                self.held = True
                return self
            time.sleep(0.05)
        raise ConfigError(f"could not take the lock {str(self.path)!r}: it keeps changing hands", self.key)

    def release(self) -> None:
        """Give the lock back (only if this process still holds it); remove dirs made for nothing."""
        if self.held:
            self.held = False
            current = self._read()
            if current is not None and (current.pid, current.host, current.start) == (
                    self.holder.pid, self.holder.host, self.holder.start):
                self.path.unlink(missing_ok=True)
        self._remove_made_dirs()

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- internals ------------------------------------------------------------------------------
    def _make_dirs(self) -> None:
        missing = []
        for parent in (self.run_dir, *self.run_dir.parents):
            if parent.exists():
                break
            missing.append(parent)
        try:
            for d in reversed(missing):
                d.mkdir()
                self._made.append(d)
        except FileExistsError:  # another job made it just now, or a file is in the way
            if not self.run_dir.is_dir():
                self._fail_write(NotADirectoryError(20, "Not a directory"))
        except OSError as e:
            self._fail_write(e)

    def _fail_write(self, e: OSError) -> None:
        self._remove_made_dirs()
        raise ConfigError(f"cannot make the run dir {str(self.run_dir)!r}: {e.strerror or e}", "run.root") from None

    def _remove_made_dirs(self) -> None:
        """Undo :meth:`_make_dirs` where nothing was written: refused input leaves no run dir."""
        for d in reversed(self._made):
            try:
                d.rmdir()
            except OSError:
                break
        self._made = []

    def _link(self, target: Path, text: str) -> bool:
        """Create ``target`` holding ``text`` atomically; False if it exists."""
        tmp = target.with_name(f"{target.name}.{self.holder.pid}.tmp")
        try:
            tmp.write_text(text)
            os.link(tmp, target)
            return True
        except FileExistsError:
            return False
        except OSError as e:
            self._fail_write(e)
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def _read(self) -> Holder | None:
        try:
            return Holder(**json.loads(self.path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _take_over(self, stale: Holder, text: str) -> bool:
        """Replace ``stale``'s lock by ours, unless someone else is doing the same right now."""
        guard = self.path.with_name(f"{LOCK_NAME}.takeover")
        try:
            if time.time() - guard.stat().st_mtime > 60:  # a taker that died mid-way (seconds at most)
                guard.unlink(missing_ok=True)
        except OSError:
            pass
        if not self._link(guard, text):
            return False
        try:
            if self._read() != stale:  # it changed hands meanwhile
                return False
            tmp = self.path.with_name(f"{LOCK_NAME}.{self.holder.pid}.new")
            tmp.write_text(text)
            os.replace(tmp, self.path)
            return True
        finally:
            guard.unlink(missing_ok=True)
