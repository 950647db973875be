"""What each stage does once the CLI has built it: fit (resume, run dir, best checkpoint's
validation, verdict), validate, test (plots, ensembles), predict; and what it reports.

:class:`Stages` is mixed into :class:`trainkit.runner.TrainkitCLI`, which parses the recipe and
builds the model, data module and trainer; a :class:`StageResult` is what the CLI prints.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only

from trainkit.callbacks.checkpointing import LastCheckpoint
from trainkit.callbacks.throughput import throughput_record
from trainkit.checkpoints import check_compatible, first_loadable, resume_point
from trainkit.data.datamodule import DataModule
from trainkit.data.preview import save_pipelines
from trainkit.ensemble import run_ensemble
from trainkit.evaluation import evaluation_plots
from trainkit.loggers import RunCSVLogger, write_wandb_id
from trainkit.metrics import METRIC_NAMES
from trainkit.module import Classifier
from trainkit.predict import output_path, resolve_input, write_predictions
from trainkit.preemption import PREEMPTION, Preempted
from trainkit.rundir import RUN_DIR_ENV, RunDir, atomic_write_text, resume_candidates
from trainkit.run_recipe import describe_changes, record_changes
from trainkit.verdict import fit_report

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    """What a stage reports: its metrics and where its run dir is."""

    stage: str
    metrics: dict[str, float]
    run_dir: Path
    extra: dict[str, Any] = field(default_factory=dict)


class Stages:
    """The stages' own work, mixed into :class:`trainkit.runner.TrainkitCLI` (LightningCLI calls
    ``before_<stage>`` and ``<stage>`` on the CLI object): resume and run-dir creation before
    fit; fit, then the best checkpoint's validation, the verdict and the throughput record;
    validate/test (or their ensembles) and the test plots; predict to a CSV; one result and
    metrics.json per stage. The attributes used here (``trainer``, ``model``, ``datamodule``,
    ``run_dir``, ``run_cfg``, ``recipe_text``, ``best_checkpoint``, ``ensemble``,
    ``eval_settings``, ``_start_logging``) are the CLI's.
    """

    def before_fit(self) -> None:
        cfg = self.config_init["fit"]
        # the checkpoint to continue from is checked (safe load, compatible weights) before
        # the run dir is touched; an unreadable last.ckpt falls back to previous.ckpt
        key = "ckpt_path" if cfg.get("ckpt_path") else "run.resume"
        candidates = [Path(cfg["ckpt_path"])] if cfg.get("ckpt_path") else resume_candidates(self.run_cfg, self.run_dir)
        found = first_loadable(candidates, key)
        if found:
            check_compatible(found[1], self.model, found[0], key)
            cfg["ckpt_path"] = str(found[0])
            if self.trainer.is_global_zero:  # trainkit's own line: on the console (Lightning's go to the log file)
                log.info("resuming from %s: training continues at %s", found[0], resume_point(found[1]))
        for logger in self.trainer.loggers:
            if isinstance(logger, RunCSVLogger):
                # the history continues from the checkpoint's step; rows after it are dropped
                logger.resume_step = int(found[1].get("global_step", 0)) if found else 0
        if "LOCAL_RANK" not in os.environ:
            # the processes Lightning starts for the other devices inherit this: one run dir
            os.environ[RUN_DIR_ENV] = str(self.run_dir.path)
        create_run_dir(self.run_dir, self.recipe_text, str(found[0]) if found else None)
        save_pipelines(self.run_dir.path, self.datamodule)
        self._start_logging()

    def before_validate(self) -> None:
        self._start_evaluation()

    def before_test(self) -> None:
        self._start_evaluation()

    def before_predict(self) -> None:
        self._start_evaluation()

    def _start_evaluation(self) -> None:
        ckpt = self.config_init[self.subcommand]["ckpt_path"]
        self._start_logging({"checkpoint": os.path.relpath(ckpt, self.run_dir.path), **self.eval_settings})
        if self.eval_settings:
            log.info("evaluation settings from the command line: %s",
                     ", ".join(f"model.{k}={v}" for k, v in self.eval_settings.items()))

    def fit(self, model: Classifier, datamodule: DataModule, **kwargs: Any) -> None:
        try:
            self.trainer.fit(model, datamodule=datamodule, **kwargs)
        except Preempted:
            pass  # LastCheckpoint saved, flushed and requeued: the job continues from last.ckpt
        last = next(c for c in self.trainer.callbacks if isinstance(c, LastCheckpoint))
        if last.preempted:
            # the requeued job (or the next `fit` with resume: auto) continues from last.ckpt
            self.result = StageResult("fit", {}, self.run_dir.path, {"fit/preempted_at_step": self.trainer.global_step})
            return
        if PREEMPTION.received and self.trainer.is_global_zero:
            log.info("%s arrived after training ended: finishing the last steps (the final validation and "
                     "metrics); nothing is left to requeue", PREEMPTION.name)
        best = self.best_checkpoint.best_model_path if self.best_checkpoint is not None else ""
        # before validate(): loading best.ckpt there restores the callbacks' states of that epoch
        report = fit_report(self.trainer, best, datamodule.num_classes)
        if "fit/validation" in report:
            # nothing was validated (data.val_fraction: 0, ...): report what exists, as the line says
            metrics = {k: v for k, v in self.trainer.callback_metrics.items()
                       if k.startswith("train/") and k.split("/", 1)[1] in METRIC_NAMES}
        else:
            # fit reports the validation metrics of the checkpoint it calls best, not the last epoch
            metrics = self._validate_best(model, datamodule, best)
        self._finish(
            "fit",
            metrics,
            {
                "fit/best_checkpoint": Path(best).name if best else None,
                "fit/epochs": self.trainer.current_epoch,
                **throughput_record(self.trainer),
                **report,
            },
        )

    def _validate_best(self, model: Classifier, datamodule: DataModule, best: str) -> dict[str, float]:
        """Validate ``best`` (the final model when empty) and log its metrics as ``best/val/*``:
        under the val curves' own names it would be one more point of them, a jump back to the
        best value at the last step."""
        loggers, self.trainer.loggers = self.trainer.loggers, []
        try:
            metrics = first(self.trainer.validate(model, datamodule=datamodule, ckpt_path=best or None,
                                                  verbose=False, weights_only=True))
        finally:
            self.trainer.loggers = loggers
        if self.trainer.is_global_zero:
            for logger in loggers:
                logger.log_metrics({f"best/{k}": float(v) for k, v in metrics.items()}, step=self.trainer.global_step)
                logger.save()
        return metrics

    def validate(self, model: Classifier, datamodule: DataModule, **kwargs: Any) -> None:
        if self.ensemble:
            return self._finish("validate", *run_ensemble(self, "val"))
        with fit_callbacks_not_restored():
            metrics = first(self.trainer.validate(model, datamodule=datamodule, **{**kwargs, "verbose": False}))
        self._finish("validate", metrics)

    def test(self, model: Classifier, datamodule: DataModule, **kwargs: Any) -> None:
        if self.ensemble:
            return self._finish("test", *run_ensemble(self, "test"))
        with fit_callbacks_not_restored():
            metrics = first(self.trainer.test(model, datamodule=datamodule, **{**kwargs, "verbose": False}))
        plots = evaluation_plots(self.trainer, model, datamodule, self.run_dir.path)
        self._finish("test", metrics, {"test/checkpoint": str(kwargs.get("ckpt_path")), **plots})

    def predict(self, model: Classifier, datamodule: DataModule, input: str = "test", **kwargs: Any) -> None:
        inp = resolve_input(input, datamodule)
        loader = torch.utils.data.DataLoader(inp.dataset, batch_size=datamodule.batch_size, num_workers=datamodule.num_workers)
        with fit_callbacks_not_restored():
            batches = self.trainer.predict(model, dataloaders=loader, **kwargs)
        out = output_path(self.run_dir.path, inp.name)
        _write_predictions(out, batches, inp, datamodule.data.classes)
        self.result = StageResult("predict", {}, self.run_dir.path, {"predictions": str(out)})

    def _finish(self, stage: str, metrics: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
        metrics = {k: float(v) for k, v in metrics.items()}
        extra = extra or {}
        if self.model.hparams.num_classes == 2:  # which class precision/recall/F1 score
            i = self.model.positive_class
            extra = {**extra, f"{stage}/positive_class": f"{self.datamodule.data.classes[i]} (index {i})"}
        _write_metrics(self.run_dir, {**metrics, **extra})
        self.result = StageResult(stage, metrics, self.run_dir.path, extra)



@rank_zero_only
def create_run_dir(run_dir: RunDir, recipe_text: str, resumed_from: str | None = None) -> None:
    """Make the run dir; write config.yaml and the W&B id if absent. A run dir that has a
    config.yaml already (a resume, a restart) keeps it unless the recipe changed: then the
    change is printed and recorded (:func:`trainkit.run_recipe.record_changes`)."""
    run_dir.checkpoints.mkdir(parents=True, exist_ok=True)
    if not run_dir.config_file.exists():
        atomic_write_text(run_dir.config_file, recipe_text)
    else:
        changes = record_changes(run_dir.path, recipe_text, resumed_from)
        if changes:
            log.info("recipe changed since this run's config.yaml: %s (recorded in config_history.yaml)",
                     describe_changes(changes))
    write_wandb_id(run_dir)


@rank_zero_only
def _write_metrics(run_dir: RunDir, metrics: dict[str, Any]) -> None:
    run_dir.write_metrics(metrics)


@rank_zero_only
def _write_predictions(path: Path, *args: Any) -> None:
    write_predictions(path, *args)


@contextlib.contextmanager
def fit_callbacks_not_restored() -> Iterator[None]:
    """An evaluation loads a fit's checkpoint, whose fit-only callbacks (best/last bookkeeping,
    RNG states, world record) have nothing to restore: Lightning's warning that they are not
    in the Trainer is noise here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Be aware that when using `ckpt_path`")
        yield


def first(results: list[dict[str, float]]) -> dict[str, float]:
    """The metrics of a validate/test call: none when its batches are limited to 0."""
    return results[0] if results else {}
