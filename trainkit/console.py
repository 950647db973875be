"""What a person sees on the console, and the run's log file that keeps everything else.

A ``trainkit`` command runs inside :func:`session`. Messages from trainkit's own code (the
launch plan, epoch lines, pruning or unfreezing events, warnings about the recipe) and errors
from anywhere reach the console; everything libraries log or warn (Lightning's hints and tips,
the model summary table, deprecations, ``Restoring states ...``) goes only to the run's log
file ``<run dir>/trainkit.log``, every line tagged with its rank. ``--verbose`` (or
``TRAINKIT_VERBOSE=1``) shows everything on the console as well, W&B's own output included.

Records that arrive before the run dir exists are held in memory and written when
:func:`attach_run_log` names it; input refused before that (exit 2) writes no file at all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

LOG_FILE = "trainkit.log"
VERBOSE_ENV = "TRAINKIT_VERBOSE"
PACKAGE_DIR = str(Path(__file__).resolve().parent)
# loggers that Lightning gives a handler of their own (and propagate=False) at import
FILE_ONLY = {"console": False}  # logging ``extra=`` of a trainkit record meant for the log file alone
LIBRARY_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")


def verbose() -> bool:
    """Whether ``--verbose`` is on for this process (inherited by the processes it starts)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def ours(path: str) -> bool:
    """Whether a record or warning comes from trainkit's own code (its file is in the package)."""
    try:
        return str(Path(path).resolve()).startswith(PACKAGE_DIR + os.sep)
    except OSError:
        return False


class _Rank(logging.Filter):
    """Stamps each record with the process's global rank (known from the launcher's variables)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from lightning.fabric.utilities.rank_zero import rank_zero_only

        record.rank = getattr(rank_zero_only, "rank", 0)
        return True


class RunLogHandler(logging.Handler):
    """Appends every record to ``<run dir>/trainkit.log``; holds them in memory until then."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(asctime)s [rank %(rank)s] %(levelname)s %(name)s: %(message)s"))
        self.addFilter(_Rank())
        self.path: Path | None = None
        self._pending: list[str] = []
        self.library_warnings = 0

    def attach(self, path: Path) -> None:
        self.path = path
        # every rank appends; one may get here before rank zero has made the run dir
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.writelines(line + "\n" for line in self._pending)
        self._pending = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001  (a bad format string must not stop a run)
            self.handleError(record)
            return
        if record.levelno >= logging.WARNING and not ours(_origin(record)):
            self.library_warnings += 1
        if self.path is None:
            self._pending.append(line)
            return
        with self.path.open("a") as f:  # appended line by line: all ranks share the file
            f.write(line + "\n")


class ConsoleHandler(logging.Handler):
    """stderr, through ``tqdm.write`` so that a line never breaks a progress bar."""

    def __init__(self, show_all: bool) -> None:
        super().__init__(logging.INFO)
        self.show_all = show_all
        self.setFormatter(logging.Formatter("%(message)s"))

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "console", True):  # marked for the log file alone (extra=FILE_ONLY)
            return False
        return self.show_all or record.levelno >= logging.ERROR or ours(_origin(record))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if record.levelno >= logging.WARNING and not message.startswith(("warning", "signal")):
                message = f"warning: {message}"
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)
        except Exception:  # noqa: BLE001
            self.handleError(record)


def _origin(record: logging.LogRecord) -> str:
    return getattr(record, "origin", record.pathname)


def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    """``warnings.showwarning`` during a session: a log record that remembers where it came from."""
    text = str(message).strip()
    if not ours(filename):
        text = f"{category.__name__}: {text} ({filename}:{lineno})"
    logging.getLogger("py.warnings").warning(text, extra={"origin": filename})


@contextlib.contextmanager
def session(show_all: bool | None = None) -> Iterator[RunLogHandler]:
    """Route logging and warnings as described above for the duration of one command.

    Restores the previous logging set-up afterwards (tests call commands in one process).
    """
    show_all = verbose() if show_all is None else show_all
    if show_all:
        os.environ[VERBOSE_ENV] = "1"
    import lightning.pytorch  # noqa: F401  (its import installs the handlers replaced here)

    root = logging.getLogger()
    run_log, console = RunLogHandler(), ConsoleHandler(show_all)
    saved_level = root.level
    saved = {name: (lg.handlers[:], lg.propagate) for name in LIBRARY_LOGGERS for lg in [logging.getLogger(name)]}
    for name in LIBRARY_LOGGERS:
        lg = logging.getLogger(name)
        lg.handlers, lg.propagate = [], True
    root.addHandler(run_log)
    root.addHandler(console)
    root.setLevel(logging.INFO)
    show_warning = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        yield run_log
    finally:
        warnings.showwarning = show_warning
        root.removeHandler(run_log)
        root.removeHandler(console)
        root.setLevel(saved_level)
        for name, (handlers, propagate) in saved.items():
            lg = logging.getLogger(name)
            lg.handlers, lg.propagate = handlers, propagate


def attach_run_log(run_dir: Path) -> Path | None:
    """Start writing the session's log to ``run_dir/trainkit.log`` (the dir must exist).

    Returns the log file, or None outside a session (trainkit used as a library).
    """
    handler = current_run_log()
    if handler is None:
        return None
    path = Path(run_dir) / LOG_FILE
    if handler.path != path:
        handler.attach(path)
    return path


def detach_run_log() -> None:
    """Hold records in memory again until the next :func:`attach_run_log` (a command that runs
    several stages, a sweep's trials, gives each its own run dir's log)."""
    handler = current_run_log()
    if handler is not None:
        handler.path, handler._pending = None, []


def current_run_log() -> RunLogHandler | None:
    """The session's :class:`RunLogHandler`, if a session is active."""
    return next((h for h in logging.getLogger().handlers if isinstance(h, RunLogHandler)), None)
