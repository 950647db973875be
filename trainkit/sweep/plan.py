"""What a sweep is: its options (shared by ``trainkit sweep`` and ``trainkit launch --sweep``),
and the checked recipe, space, metric and sweep dir ``<run.root>/<experiment>/sweep-<study>/``.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

from trainkit.errors import ConfigError
from trainkit.metrics import METRIC_NAMES
from trainkit.sweep.space import Param, check_builds, check_paths, load_space, override, refine
from trainkit.sweep.study import PRUNERS, SAMPLERS


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trainkit sweep",
        description="Search recipe keys with Optuna; each trial is a `trainkit fit` run dir in the sweep dir.",
        epilog="Anything else (--trainer.max_epochs=5 ...) is an override for every trial.",
    )
    p.add_argument("--config", required=True, help="recipe YAML file")
    p.add_argument("--space", help="space YAML: recipe path -> {choice|uniform|loguniform|int: [...]}")
    p.add_argument("--trials", type=int, default=None, help="trials to run (default: the grid's size, else 20)")
    p.add_argument("--sampler", choices=SAMPLERS, default="tpe")
    p.add_argument("--metric", default="val/acc", help="validation metric to optimize (default val/acc)")
    p.add_argument("--direction", choices=("maximize", "minimize"), default=None,
                   help="default: minimize for val/loss, else maximize")
    p.add_argument("--storage", default=None,
                   help="Optuna storage: RDB URL or journal:PATH (default: SQLite study.db in the sweep dir)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes sharing the study")
    p.add_argument("--study", default=None, help="study name; an existing study is joined (default: a timestamp)")
    p.add_argument("--refine", action="store_true",
                   help="start a new study <study>-fine over ranges narrowed around the best trials of --study")
    p.add_argument("--pruner", choices=PRUNERS, default="median", help="stops unpromising trials early")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (the grid's order; every worker uses the same)")
    p.add_argument("--sweep-dir", help=argparse.SUPPRESS)  # set for local worker processes: checks done
    p.add_argument("--no-results", action="store_true", help=argparse.SUPPRESS)
    return p


@dataclass
class Sweep:
    """Everything a worker needs, resolved once."""

    name: str
    sweep_dir: Path
    params: list[Param]
    metric: str
    direction: str
    root: str  # run.root and run.experiment of the recipe: where best.yaml's runs go
    experiment: str


def resolve(args: argparse.Namespace, overrides: list[str]) -> Sweep:
    """Check recipe, space and metric (ConfigError before anything is written) and name the sweep."""
    stage, name = args.metric.split("/", 1) if "/" in args.metric else ("", args.metric)
    if stage != "val" or name not in METRIC_NAMES:
        raise ConfigError(f"must be a validation metric, one of {', '.join('val/' + m for m in METRIC_NAMES)}; got {args.metric!r}", "--metric")
    direction = args.direction or ("minimize" if name == "loss" else "maximize")
    if args.trials is not None and args.trials < 1 or args.workers < 1:
        raise ConfigError(f"--trials and --workers must be >= 1, got {args.trials} and {args.workers}", "sweep")
    if args.sweep_dir:  # a worker started by a sweep that checked everything
        sweep_dir = Path(args.sweep_dir)
        params = load_space(sweep_dir / "space.yaml")
        return Sweep(args.study, sweep_dir, params, args.metric, direction, "", "")

    from trainkit.runner import TrainkitCLI

    base = TrainkitCLI(["fit", "--config", args.config, *overrides], run_stage=False)
    experiment_dir = base.run_dir.path.parent
    cfg = base.config["fit"]
    if args.refine:
        if not args.study:
            raise ConfigError("names the study to refine: --refine --study NAME", "--refine")
        params, name = _refined(args, experiment_dir, direction)
    else:
        if not args.space:
            raise ConfigError("a sweep needs a space file: --space S.yaml", "--space")
        params = load_space(args.space)
        name = args.study or time.strftime("%Y%m%d-%H%M%S")
    if "/" in name or name in ("", ".", ".."):
        raise ConfigError(f"must be a plain name, got {name!r}", "--study")
    check_paths(params, dict(cfg.items()), args.config)
    if args.sampler == "grid":
        for p in params:
            p.grid()  # raises for continuous ranges
    check_values(params, ["fit", "--config", args.config, *overrides])
    return Sweep(name, experiment_dir / f"sweep-{name}", params, args.metric, direction, str(cfg.run.root), experiment_dir.name)


def check_values(params: list[Param], argv: list[str]) -> None:
    """Build the recipe with every choice and both ends of every range (see
    :func:`~trainkit.sweep.space.check_builds`): keys inside dicts (``model.optimizer.lrr``),
    types and out-of-range values fail here, before anything is written, not at trial N.

    Raises:
        ConfigError: naming the space path, the value and which end or choice it is.
    """
    from trainkit.runner import TrainkitCLI

    for build in check_builds(params):
        try:
            TrainkitCLI([*argv, *(override(p.path, v) for p, v, _ in build)], run_stage=False)
        except ConfigError as e:
            # the parameter the error is about: its key names it, else the first whose path it mentions
            culprit = next((b for b in build if e.key and (e.key == b[0].path or e.key.startswith(b[0].path + "."))), None)
            culprit = culprit or next((b for b in build if b[0].path in str(e)), None)
            if culprit is None:
                values = ", ".join(f"{p.path}={v!r}" for p, v, _ in build)
                raise ConfigError(f"the recipe refuses the space's values ({values}): {e}", "--space") from None
            param, value, which = culprit
            why = str(e).removeprefix(f"{e.key}: ") if e.key == param.path else str(e)
            raise ConfigError(f"{value!r} ({which}) is refused, so no trial runs: {why}", param.path) from None


def _refined(args: argparse.Namespace, experiment_dir: Path, direction: str) -> tuple[list[Param], str]:
    """The narrowed space around the best quarter of the complete trials of ``--study``, and its new name."""
    import optuna
    from optuna.trial import TrialState

    from trainkit.sweep.study import storage

    old_dir = experiment_dir / f"sweep-{args.study}"
    if not (old_dir / "space.yaml").is_file():
        raise ConfigError(f"no sweep {args.study!r} to refine: {old_dir}/space.yaml is missing", "--study")
    old = optuna.load_study(study_name=args.study, storage=storage(args.storage, old_dir))
    done = list(old.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    done.sort(key=lambda t: t.value, reverse=old.direction.name.lower() == "maximize")
    top = done[: max(1, math.ceil(len(done) / 4))]
    params = refine(load_space(args.space or old_dir / "space.yaml"), [t.params for t in top])
    name, n = f"{args.study}-fine", 1
    while (experiment_dir / f"sweep-{name}").exists():
        n += 1
        name = f"{args.study}-fine{n}"
    return params, name
