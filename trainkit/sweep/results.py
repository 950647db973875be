"""What a sweep leaves in its sweep dir: ``trials.csv``, ``best.yaml`` and PNG plots."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import yaml

from trainkit.rundir import atomic_write_text
from trainkit.safe_yaml import load_yaml

log = logging.getLogger(__name__)


def write_trials_csv(study: Any, path: Path, metric: str) -> None:
    """One row per trial: number, state, the metric, each parameter, epochs run, run dir."""
    trials = study.get_trials(deepcopy=False)
    names = sorted({k for t in trials for k in t.params})
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["number", "state", metric, *names, "pruned_at_epoch", "run_dir"])
    for t in trials:
        value = t.value if t.value is not None else t.user_attrs.get("value_at_stop", "")
        w.writerow([
            t.number, t.state.name, value, *(t.params.get(n, "") for n in names),
            t.user_attrs.get("pruned_at_epoch", ""), t.user_attrs.get("run_dir", ""),
        ])
    atomic_write_text(path, out.getvalue())


def best_trial(study: Any) -> Any | None:
    """The best complete trial, or None when no trial completed."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    return study.best_trial


def best_recipe(trial_dir: Path, root: str, experiment: str) -> str:
    """The best trial's resolved recipe as a complete recipe file: ``trainkit fit --config best.yaml``
    trains the same model again (same seed, same values), in a new run of ``experiment``."""
    recipe = load_yaml((trial_dir / "config.yaml").read_text(), f"{trial_dir / 'config.yaml'}")
    recipe["run"] = {**recipe.get("run", {}), "root": root, "experiment": experiment, "name": None, "resume": "auto"}
    header = f"# best trial of a trainkit sweep: {trial_dir}\n"
    return header + yaml.safe_dump(recipe, sort_keys=False)


def write_plots(study: Any, sweep_dir: Path, metric: str) -> list[Path]:
    """Optimization history and parameter importances as PNG (importances need 2+ complete trials
    that differ); returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis
    from optuna.exceptions import ExperimentalWarning
    import warnings

    written = []
    plots = {"history.png": vis.plot_optimization_history, "importance.png": vis.plot_param_importances}
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                ax = plot(study, target_name=metric)
        except (ValueError, RuntimeError, ZeroDivisionError) as e:  # too few or identical trials
            log.info("no %s: %s", name, e)
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.savefig(sweep_dir / name, dpi=100, bbox_inches="tight")
        plt.close(fig)
        written.append(sweep_dir / name)
    return written


def write_results(study: Any, sweep_dir: Path, metric: str, root: str, experiment: str) -> dict[str, Any]:
    """Write trials.csv, best.yaml (when a trial completed) and the plots; return a summary."""
    write_trials_csv(study, sweep_dir / "trials.csv", metric)
    summary: dict[str, Any] = {"trials": len(study.get_trials(deepcopy=False))}
    best = best_trial(study)
    if best is not None:
        trial_dir = Path(best.user_attrs["run_dir"])
        atomic_write_text(sweep_dir / "best.yaml", best_recipe(trial_dir, root, experiment))
        summary.update({"best trial": best.number, f"best {metric}": best.value, "best run dir": str(trial_dir)})
        summary.update({f"best {k}": v for k, v in best.params.items()})
    summary["plots"] = ", ".join(p.name for p in write_plots(study, sweep_dir, metric)) or "none"
    return summary
