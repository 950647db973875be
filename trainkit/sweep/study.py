"""The Optuna side of a sweep: storage, sampler, pruner, and the ask-run-tell loop of one worker.

Several workers (local processes, SLURM array tasks) share one study through its storage. They
take trials under a file lock in the sweep dir, so a grid never hands out a point twice and a
grid sweep stops at the grid's size, however many workers ask at once.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from trainkit.errors import ConfigError
from trainkit.sweep.space import Param, override
from trainkit.sweep.trials import run_trial, trial_args

log = logging.getLogger(__name__)

SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("median", "hyperband", "none")
LOCK_FILE = ".sweep.lock"


def storage(spec: str | None, sweep_dir: Path) -> Any:
    """An Optuna storage: ``None`` -> SQLite file ``study.db`` in the sweep dir; an RDB URL
    (``sqlite:///x.db``, ``postgresql://...``); or ``journal:PATH`` / a ``*.log`` path for a
    journal file (Optuna's file storage, safe for many processes on one file system).
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if spec is None:
        spec = f"sqlite:///{(sweep_dir / 'study.db').resolve()}"
    if spec.startswith("journal:") or spec.endswith((".log", ".journal")):
        path = Path(spec.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if "://" not in spec:
        raise ConfigError(f"give an RDB URL (sqlite:///f.db), journal:PATH or a .log file, got {spec!r}", "--storage")
    engine = {"connect_args": {"timeout": 120}} if spec.startswith("sqlite") else {}
    # several processes on one SQLite file: wait for the file lock instead of "database is locked"
    return optuna.storages.RDBStorage(spec, engine_kwargs=engine)


def sampler(name: str, params: list[Param], seed: int) -> Any:
    """Optuna sampler by name. A grid's point order depends on ``seed``: every worker of one
    study must pass the same seed (trial number ``n`` takes grid point ``n``)."""
    import optuna

    if name == "grid":

        class Grid(optuna.samplers.GridSampler):
            # GridSampler stops a study.optimize() loop from after_trial; trainkit's ask/tell
            # loop (see work) stops at the grid's size itself, where Study.stop would raise
            def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
                pass

        return Grid({p.path: p.grid() for p in params}, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    raise ConfigError(f"unknown sampler {name!r} (known: {', '.join(SAMPLERS)})", "--sampler")


def pruner(name: str) -> Any:
    """Optuna pruner by name; median waits for 2 finished trials and 1 epoch before pruning."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"unknown pruner {name!r} (known: {', '.join(PRUNERS)})", "--pruner")


def grid_size(params: list[Param]) -> int:
    return math.prod(len(p.grid()) for p in params)


@contextmanager
def sweep_lock(sweep_dir: Path) -> Iterator[None]:
    """An exclusive lock shared by every worker of the sweep (a file in the sweep dir)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / LOCK_FILE, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_study(name: str, storage_obj: Any, sampler_obj: Any, pruner_obj: Any, direction: str, sweep_dir: Path) -> Any:
    """Create the study or join it; under the sweep lock, so racing workers create it once."""
    import optuna

    with sweep_lock(sweep_dir):
        study = optuna.create_study(
            study_name=name, storage=storage_obj, sampler=sampler_obj, pruner=pruner_obj,
            direction=direction, load_if_exists=True,
        )
    if study.direction.name.lower() != direction:
        raise ConfigError(f"study {name!r} exists and is {study.direction.name.lower()}d, not {direction}d", "--direction")
    return study


def work(study: Any, params: list[Param], n_trials: int, *, base: list[str], sweep_dir: Path, metric: str, grid: bool) -> int:
    """Run up to ``n_trials`` trials of ``study`` in this process; returns how many ran.

    ``base`` is ``["--config", RECIPE, *overrides]``. A trial that crashes is recorded as failed
    and the next one starts; bad input (exit 2) stops the worker.
    """
    from optuna.trial import TrialState

    direction = study.direction.name.lower()
    limit = grid_size(params) if grid else None
    ran = 0
    for _ in range(n_trials):
        with sweep_lock(sweep_dir):
            if limit is not None and len(study.get_trials(deepcopy=False)) >= limit:
                log.info("the grid of %d points is done", limit)
                break
            trial = study.ask()
        values = {p.path: p.suggest(trial, grid=grid) for p in params}
        argv = trial_args(base, [override(k, v) for k, v in values.items()], sweep_dir, trial.number, metric, direction)
        trial.set_user_attr("run_dir", str(sweep_dir / f"trial-{trial.number:04d}"))
        trial.set_user_attr("worker_pid", os.getpid())
        ran += 1
        try:
            result, prune = run_trial(argv, trial, metric, sweep_dir.name)
        except (ConfigError, SystemExit):
            study.tell(trial, state=TrialState.FAIL)
            raise
        except Exception as e:  # a diverging or crashing trial is a result of the search, not its end
            log.warning("trial %d failed: %s: %s", trial.number, type(e).__name__, e)
            study.tell(trial, state=TrialState.FAIL)
            continue
        value = result.metrics.get(metric)
        if value is None or math.isnan(value):
            study.tell(trial, state=TrialState.FAIL)
        elif prune.pruned_at is not None:
            trial.set_user_attr("pruned_at_epoch", prune.pruned_at)
            trial.set_user_attr("value_at_stop", value)
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, value)
    return ran
