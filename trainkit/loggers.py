"""A run's loggers: its one W&B run and its one CSV file, whatever command writes to them.

- W&B: every command on a run dir continues the run id stored in ``wandb_id``. ``fit`` writes
  the recipe as the run config; evaluations (test, validate, predict) leave that config as the
  fit wrote it and add their own entry (``config.<stage>``: checkpoint and evaluation
  settings), and their history keys are their own (``test/*``; a ``validate`` logs
  ``validate/val/*``, so it never adds points to the fit's ``val/*`` curves). W&B prints to the
  run's log file, not the console, unless ``--verbose``. Offline, every invocation is one more
  ``wandb/offline-run-*`` dir of the same run id; :func:`wandb_hint` names all of them.
- CSV: ``<run dir>/metrics.csv``, the fit's per-step and per-epoch history. A resumed fit
  continues the file: rows after the checkpoint it resumes from (written by the attempt that
  was cut short) are dropped first, so no step appears twice.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import Any, Mapping

import yaml
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from trainkit.console import verbose
from trainkit.rundir import RunDir, atomic_write_text, wandb_mode
from trainkit.secrets import argv_has_secret

CSV_FILE = "metrics.csv"
HPARAMS_FILE = "hparams.yaml"


class RunCSVLogger(Logger):
    """``<run dir>/metrics.csv``, one row per logging call, continued across resumes.

    Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` in the folder it writes to,
    so a resumed fit would lose its history or start a new ``version_N`` folder; this one
    appends. Rows whose step is after ``resume_step`` (the checkpoint's global step) are
    dropped before the first new row is written.

    Args:
        path: the CSV file.
        resume_step: the global step of the checkpoint the fit continues from (0: a fresh fit).
    """

    def __init__(self, path: Path, resume_step: int = 0):
        super().__init__()
        self.path = Path(path)
        self.resume_step = resume_step
        self._rows: list[dict[str, Any]] = []
        self._keys: list[str] | None = None  # the file's header, once the file is opened

    @property
    @override
    def name(self) -> str:
        return "csv"

    @property
    @override
    def version(self) -> str:
        return ""

    @override
    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Merged into ``hparams.yaml`` beside the CSV (the lr plan of the latest start; the
        recipe itself is config.yaml)."""
        path = self.path.with_name(HPARAMS_FILE)
        old = yaml.safe_load(path.read_text()) if path.is_file() else None
        new = dict(params) if isinstance(params, Mapping) else dict(vars(params))
        atomic_write_text(path, yaml.safe_dump({**(old or {}), **new}, sort_keys=False))

    @override
    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        # counters (epoch) stay integers; every other value is a float
        row = {k: v if isinstance(v, int) else float(v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}
        row["step"] = step if step is not None else len(self._rows)
        self._rows.append(row)

    @override
    @rank_zero_only
    def save(self) -> None:
        if not self._rows:
            return
        if self._keys is None:
            self._keys = self._continue()
        new = sorted({k for r in self._rows for k in r} - set(self._keys))
        if new or not self.path.exists():
            # a new column: the header changes, so the file is rewritten once with it
            old = self._read()
            self._keys = sorted({*self._keys, *new})
            self._write(old + self._rows)
        else:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, fieldnames=self._keys).writerows(self._rows)
        self._rows = []

    @override
    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()

    def _continue(self) -> list[str]:
        """Keep the rows of the work the resumed checkpoint holds; returns the header."""
        rows = self._read()
        if not rows:
            return []
        kept = [r for r in rows if keep_row(r, self.resume_step)]
        keys = sorted({k for r in rows for k in r})
        if len(kept) != len(rows):
            self._keys = keys
            self._write(kept)
        return keys

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        with self.path.open(newline="") as f:
            return [{k: v for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]

    def _write(self, rows: list[dict[str, Any]]) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._keys or ["step"])
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)


def keep_row(row: Mapping[str, Any], resume_step: int) -> bool:
    """Whether a CSV row belongs to the work a checkpoint at ``resume_step`` holds.

    Rows before the checkpoint's step stay. At that very step, the rows logged at an epoch's
    end outside Lightning's ``self.log`` (they have no ``epoch`` column, e.g. diagnostics)
    were written before the checkpoint was; the final validation of the best checkpoint
    (with an ``epoch``) is redone by the resumed fit.

    >>> keep_row({"step": "19", "epoch": "0"}, 20), keep_row({"step": "20"}, 20), keep_row({"step": "20", "epoch": "1"}, 20)
    (True, True, False)
    >>> keep_row({"step": "0"}, 0)
    False
    """
    step = int(float(row.get("step", 0)))
    return step < resume_step or (step == resume_step > 0 and row.get("epoch") in (None, ""))


class RunWandbLogger(WandbLogger):
    """Lightning's WandbLogger, with an evaluation's keys kept apart from the fit's curves."""

    def __init__(self, stage: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.stage = stage
        # Lightning always passes `anonymous` to wandb.init (None unless asked for), and wandb
        # 0.31 warns "The anonymous setting has no effect" whenever the key is given at all; no
        # public argument leaves it out, so it is dropped from Lightning's init arguments here.
        self._wandb_init.pop("anonymous", None)

    @override
    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if self.stage == "validate":
            metrics = {f"validate/{k}": v for k, v in metrics.items()}
        super().log_metrics(metrics, step)


def wandb_logger(stage: str, run_dir: RunDir, config: dict[str, Any] | None) -> RunWandbLogger:
    """The run's W&B logger for ``stage``; ``config`` (the recipe) only from ``fit``."""
    import wandb

    # a `trainkit sweep` trial (run dir <experiment>/sweep-<study>/trial-N): the experiment's
    # project, grouped under the sweep's name
    group = os.environ.get("TRAINKIT_SWEEP") or None
    path = run_dir.path
    extra: dict[str, Any] = {"config": config, "job_type": "fit"} if stage == "fit" else {}
    return RunWandbLogger(
        stage,
        name=path.name,
        project=path.parent.parent.name if group else path.parent.name,
        group=group,
        # absolute: a W&B service inherited through WANDB_SERVICE may run in another directory
        save_dir=str(path.resolve()),
        id=run_dir.wandb_id,
        resume="allow",
        mode=wandb_mode(),
        settings=wandb.Settings(
            # W&B's metadata records the command line: leave it out when it carries a secret
            x_disable_meta=argv_has_secret(sys.argv),
            # W&B writes its messages to its debug.log in the run dir; --verbose shows them
            silent=not verbose(),
        ),
        **extra,
    )


def start_wandb(logger: WandbLogger, stage: str, record: Mapping[str, Any] | None = None) -> None:
    """Start the W&B run (rank zero), with an evaluation's own entry in its config."""
    if rank_zero_only.rank != 0:
        return
    run = logger.experiment
    if record and hasattr(run, "config"):
        run.config.update({stage: dict(record)}, allow_val_change=True)


def summary_without_diagnostics(run: Any) -> None:
    """Drop the ``diag/*`` entries from a W&B run's summary, which then leads with the metrics
    (``val/acc`` ...) instead of dozens of per-layer values; their curves stay in the history.

    ``define_metric("diag/*", summary="none")`` does not do it: beside Lightning's own glob
    ``"*"`` wandb 0.31 applies one of the two overlapping globs to a key, either one, from run
    to run (seen here), so the entries are removed at the end instead.
    """
    summary = getattr(run, "summary", None)
    if summary is None:
        return
    for key in [k for k in summary.keys() if k.startswith("diag/")]:
        del summary[key]


def wandb_hint(run_dir: Path) -> str | None:
    """Where the run's W&B records are and how to upload them, naming what exists."""
    mode = wandb_mode()
    if mode == "disabled":
        return None
    parts = sorted(Path(run_dir).glob("wandb/offline-run-*"))
    if mode != "offline" or not parts:
        return None
    where = Path(run_dir) / "wandb"
    files = str(parts[0]) if len(parts) == 1 else f"{where}/offline-run-*"
    return (f"W&B: offline, {len(parts)} part{'s' if len(parts) > 1 else ''} of run "
            f"{RunDir(Path(run_dir)).wandb_id} in {where}; upload: wandb sync {files}")


def write_wandb_id(run_dir: RunDir) -> None:
    """Store the run's W&B id (once), so every later command continues the same W&B run."""
    f = run_dir.path / "wandb_id"
    if not f.exists():
        atomic_write_text(f, run_dir.wandb_id + "\n")


def finish_wandb() -> None:
    """Close this process's W&B run, its summary without diagnostics (see below)."""
    import wandb

    if wandb.run is not None:
        summary_without_diagnostics(wandb.run)
        wandb.finish()
