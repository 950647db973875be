"""Run directories: ``<run.root>/<run.experiment>/<run.name>/`` and what lives in them.

A run dir holds ``config.yaml`` (the full resolved recipe), ``checkpoints/`` (``last.ckpt`` and
``best.ckpt``), ``metrics.json`` (final metrics of each stage that ran, merged), ``metrics.csv``,
``wandb/`` (the W&B run) and ``wandb_id`` (so every later stage or restart continues the same
W&B run). Nothing here deletes or overwrites an earlier run's files.
"""

from __future__ import annotations

import json
import os
import random
import string
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

from trainkit.errors import ConfigError

RESUME_CHOICES = ("auto", "never")


@dataclass
class RunConfig:
    """Where a run lives and whether it continues an earlier one (the recipe's ``run:`` keys).

    Args:
        root: directory under which run dirs are made.
        experiment: experiment name (default: the recipe file's stem).
        name: run name (default: the SLURM job id, the torchrun run id, or a timestamp).
        resume: ``auto`` (continue from the run dir's ``checkpoints/last.ckpt`` if there is one),
            ``never`` (start afresh; an existing run dir is kept and a new version made), or the
            path of a checkpoint to continue from.
    """

    root: str = "runs"
    experiment: str | None = None
    name: str | None = None
    resume: str = "auto"


RUN_DIR_ENV = "TRAINKIT_RUN_DIR"


def default_run_name(env: Mapping[str, str] = os.environ) -> tuple[str, bool]:
    """The run name when the recipe gives none, and whether it names a job (so restarts reuse it).

    A SLURM job id or a torchrun run id is the same on every rank and every restart of one
    job, so a restarted job finds its run dir again. Otherwise the name is a timestamp.

    >>> default_run_name({"SLURM_JOB_ID": "42"})
    ('slurm-42', True)
    >>> default_run_name({"SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "3", "SLURM_JOB_ID": "9"})
    ('slurm-7_3', True)
    >>> default_run_name({"TORCHELASTIC_RUN_ID": "abc"})
    ('torchrun-abc', True)
    """
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"slurm-{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}", True
    if env.get("SLURM_JOB_ID"):
        return f"slurm-{env['SLURM_JOB_ID']}", True
    if env.get("TORCHELASTIC_RUN_ID", "none") != "none":
        return f"torchrun-{env['TORCHELASTIC_RUN_ID']}", True
    return time.strftime("%Y%m%d-%H%M%S"), False


def _check_name(value: str, key: str) -> str:
    if not value or value in (".", "..") or "/" in value or "\\" in value:
        raise ConfigError(f"must be a plain directory name (no '/', not '.' or '..'), got {value!r}", key)
    return value


@dataclass
class RunDir:
    """One run's directory (it may not exist yet)."""

    path: Path

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.json"

    def checkpoint(self, which: str) -> Path:
        """``best`` or ``last`` checkpoint of this run, or ``which`` as a path.

        Raises:
            ConfigError: the checkpoint does not exist.
        """
        path = self.checkpoints / f"{which}.ckpt" if which in ("best", "last") else Path(which)
        if not path.is_file():
            have = sorted(p.name for p in self.checkpoints.glob("*.ckpt")) if self.checkpoints.is_dir() else []
            raise ConfigError(
                f"checkpoint {str(path)!r} does not exist (use best, last or a path; "
                f"{self.checkpoints} holds: {', '.join(have) or 'nothing'})",
                "ckpt_path",
            )
        return path

    @cached_property
    def wandb_id(self) -> str:
        """The W&B run id of this run dir: the stored one, else a new one (stored by the caller)."""
        f = self.path / "wandb_id"
        if f.is_file():
            return f.read_text().strip()
        # SystemRandom: independent of seed_everything, so two runs with one seed get two ids
        alphabet = string.ascii_lowercase + string.digits
        return "".join(random.SystemRandom().choices(alphabet, k=8))

    def read_metrics(self) -> dict[str, Any]:
        if not self.metrics_file.is_file():
            return {}
        return json.loads(self.metrics_file.read_text())

    def write_metrics(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``metrics`` into ``metrics.json`` (each stage adds its own keys); atomic."""
        merged = {**self.read_metrics(), **metrics}
        atomic_write_text(self.metrics_file, json.dumps(merged, indent=2, sort_keys=True) + "\n")
        return merged


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:  # a failed write (disk full) leaves no half file behind
        tmp.unlink(missing_ok=True)


def resolve_run_dir(run: RunConfig, recipe_path: str | None, stage: str) -> RunDir:
    """The run dir a stage works in.

    ``fit`` may make a new run dir; with ``resume: never`` an existing non-empty dir is never
    reused: a new version ``<name>-v1``, ``-v2``, ... is made beside it. Other stages
    (``validate``, ``test``, ``predict``) work in an existing run dir named by ``run.name``.

    Raises:
        ConfigError: a bad name or ``resume`` value, or a run dir that a stage needs is missing.
    """
    experiment = _check_name(run.experiment or (Path(recipe_path).stem if recipe_path else "default"), "run.experiment")
    base = Path(run.root) / experiment
    if stage != "fit":
        if not run.name:
            raise ConfigError(f"{stage} evaluates a trained run: name it with --run.name ({_known_runs(base)})", "run.name")
        path = base / _check_name(run.name, "run.name")
        if not path.is_dir():
            raise ConfigError(f"no run dir {str(path)!r} ({_known_runs(base)})", "run.name")
        return RunDir(path)
    if run.resume not in RESUME_CHOICES and not Path(run.resume).is_file():
        raise ConfigError(
            f"must be auto, never, or the path of an existing checkpoint; got {run.resume!r}", "run.resume"
        )
    if os.environ.get(RUN_DIR_ENV) and "LOCAL_RANK" in os.environ:
        # a process Lightning started for another device: the run dir its parent chose
        return RunDir(Path(os.environ[RUN_DIR_ENV]))
    if run.name:
        name, reusable = _check_name(run.name, "run.name"), True
    else:
        name, reusable = default_run_name()
    path = base / name
    if run.resume == "never" or not reusable:
        # a timestamp names a new run: one started in the same second gets the next version
        version = 0
        while path.exists() and any(path.iterdir()):
            version += 1
            path = base / f"{name}-v{version}"
    return RunDir(path)


def _known_runs(base: Path) -> str:
    runs = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    return f"runs in {base}: {', '.join(runs)}" if runs else f"{base} holds no runs yet"


def resume_candidates(run: RunConfig, run_dir: RunDir) -> list[Path]:
    """The checkpoints ``fit`` may continue from, best first: an explicit path, or under
    ``auto`` the run dir's ``last.ckpt`` and then ``previous.ckpt`` (the one before it)."""
    if run.resume == "never":
        return []
    if run.resume != "auto":
        return [Path(run.resume)]
    return [run_dir.checkpoints / "last.ckpt", run_dir.checkpoints / "previous.ckpt"]


def wandb_mode(env: Mapping[str, str] = os.environ) -> str:
    """``online`` only when W&B credentials are configured, else ``offline``; WANDB_MODE wins.

    An online run without credentials fails (no terminal to log in from), so trainkit never
    asks for it implicitly; offline runs are written locally and can be synced later.

    >>> wandb_mode({"WANDB_MODE": "disabled"})
    'disabled'
    >>> wandb_mode({"WANDB_API_KEY": "x" * 40, "HOME": "/nonexistent"})
    'online'
    >>> wandb_mode({"HOME": "/nonexistent"})
    'offline'
    """
    if env.get("WANDB_MODE"):
        return env["WANDB_MODE"]
    if env.get("WANDB_API_KEY"):
        return "online"
    netrc = Path(env.get("NETRC") or Path(env.get("HOME", "~")).expanduser() / ".netrc")
    try:
        if "api.wandb.ai" in netrc.read_text():
            return "online"
    except OSError:
        pass
    return "offline"
