"""The Lightning stages (fit, validate, test, predict) driven by a recipe, via LightningCLI.

``run(argv)`` parses a recipe plus dotted overrides, builds the model, data module and
trainer, runs the stage in its run dir and returns a :class:`StageResult`; the CLI prints it.
Bad input raises :class:`~trainkit.errors.ConfigError` (or exits 2 from jsonargparse) before
any file is written.
"""

from __future__ import annotations

import csv
import os
import difflib
import re
import warnings
from argparse import ArgumentError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

from trainkit.callbacks.checkpointing import LastCheckpoint
from trainkit.callbacks.diagnostics import DiagnosticsConfig, diagnostics_callbacks
from trainkit.callbacks.world import WorldRecord
from trainkit.data.datamodule import DataModule
from trainkit.data.preview import augment_seed, pipelines_config, save_pipelines
from trainkit.errors import ConfigError
from trainkit.evaluation import evaluation_plots
from trainkit.metrics import STAGES
from trainkit.module import Classifier
from trainkit.optim.scaling import check_lr_scaling
from trainkit.rundir import RUN_DIR_ENV, RunConfig, RunDir, atomic_write_text, resolve_run_dir, resume_checkpoint, wandb_mode

METRIC_NAMES = ("loss", "acc", "precision", "recall", "f1", "auroc")


@dataclass
class CheckpointConfig:
    """Which checkpoint is "best" (the recipe's ``checkpoint:`` keys).

    Args:
        monitor: metric that ranks checkpoints, ``<train|val>/<loss|acc|precision|recall|f1|auroc>``.
        mode: ``max`` (higher is better) or ``min``.
        every_n_steps: also refresh ``last.ckpt`` every this many optimizer steps, mid-epoch
            (``null``: at epoch ends only); a resume continues with the batches not yet seen.
    """

    monitor: str = "val/acc"
    mode: str = "max"
    every_n_steps: int | None = None

    def __post_init__(self) -> None:
        valid = [f"{s}/{m}" for s in STAGES[:2] for m in METRIC_NAMES]
        if self.monitor not in valid:
            raise ConfigError(f"unknown metric {self.monitor!r} (valid: {', '.join(valid)})", "checkpoint.monitor")
        if self.mode not in ("min", "max"):
            raise ConfigError(f"must be min or max, got {self.mode!r}", "checkpoint.mode")
        if self.every_n_steps is not None and self.every_n_steps < 1:
            raise ConfigError(f"must be >= 1 or null, got {self.every_n_steps}", "checkpoint.every_n_steps")


@dataclass
class StageResult:
    """What a stage reports: its metrics and where its run dir is."""

    stage: str
    metrics: dict[str, float]
    run_dir: Path
    extra: dict[str, Any] = field(default_factory=dict)


class TrainkitCLI(LightningCLI):
    """LightningCLI with trainkit's run dir, checkpoints, W&B logger and results."""

    def __init__(self, args: list[str], run_stage: bool = True):
        self.result: StageResult | None = None
        self.run_stage = run_stage  # False: parse, check and build everything, run nothing
        with warnings.catch_warnings():
            # argv is given explicitly on purpose (the CLI passes sys.argv[1:], tests their own)
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            self._start(args)

    def _start(self, args: list[str]) -> None:
        super().__init__(
            Classifier,
            DataModule,
            save_config_callback=None,  # trainkit writes config.yaml itself, only for new runs
            seed_everything_default=0,
            args=args,
            auto_configure_optimizers=False,  # optimizers come from model.optimizer by name
            # no abbreviations: --trainer.max_epoch must not silently mean max_epochs
            parser_kwargs={
                "default_env": False,
                "exit_on_error": False,
                "allow_abbrev": False,
                **{stage: {"allow_abbrev": False} for stage in self.subcommands()},
            },
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(RunConfig, "run")
        parser.add_class_arguments(CheckpointConfig, "checkpoint", instantiate=False)
        parser.add_class_arguments(DiagnosticsConfig, "diagnostics", instantiate=False)
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.input_shape", "model.input_shape", apply_on="instantiate")
        parser.link_arguments("seed_everything", "data.seed", compute_fn=augment_seed)

    # -- parsing: resolve the run dir and checkpoint before anything is built ---------------
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        check_recipe_files(args)
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as e:
            stage_parser = self._subcommand_parsers.get(args[0] if args else "")
            raise ConfigError(explain_parse_error(str(e), stage_parser)) from None
        stage = self.config.subcommand
        cfg = self.config[stage]
        self.run_cfg = RunConfig(**cfg.run.as_dict())
        self.ckpt_cfg = CheckpointConfig(**cfg.checkpoint.as_dict())
        self.diag_cfg = DiagnosticsConfig(**cfg.diagnostics.as_dict())
        recipes = cfg.get("config") or []
        self.recipe_path = str(recipes[0]) if recipes else None
        self.run_dir = resolve_run_dir(self.run_cfg, self.recipe_path, stage)
        # the saved recipe names its run, so `fit --config <run dir>/config.yaml` continues it
        cfg.run.experiment, cfg.run.name = self.run_dir.path.parent.name, self.run_dir.path.name
        if stage != "fit":
            # best/last resolve in the run dir; LightningCLI then reads the checkpoint's hparams
            cfg.ckpt_path = str(self.run_dir.checkpoint(cfg.ckpt_path or "best"))
        self.recipe_text = self._parser(stage).dump(cfg, skip_none=False)

    def after_instantiate_classes(self) -> None:
        # load and split the data now, so data errors exit 2 before the run dir is touched
        self.datamodule.setup(self.subcommand)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_cfg = self.config_init[self.subcommand]["trainer"]
        callbacks = list(trainer_cfg.get("callbacks") or [])
        if self.subcommand == "fit":
            callbacks.append(
                ModelCheckpoint(
                    dirpath=self.run_dir.checkpoints,
                    filename="best",
                    monitor=self.ckpt_cfg.monitor,
                    mode=self.ckpt_cfg.mode,
                    save_top_k=1,
                    save_last=False,  # see LastCheckpoint
                    auto_insert_metric_name=False,
                )
            )
            callbacks += [
                *diagnostics_callbacks(self.diag_cfg),
                LastCheckpoint(self.run_dir.checkpoints / "last.ckpt", self.ckpt_cfg.every_n_steps),
                WorldRecord(self.datamodule.batch_size, check_lr_scaling(self.model.lr_scaling)),
            ]
        kwargs["callbacks"] = callbacks
        if SLURMEnvironment.detect() and not TorchElasticEnvironment.detect():
            # trainkit's Preemption callback checkpoints and requeues instead of Lightning's handler
            kwargs["plugins"] = [*(trainer_cfg.get("plugins") or []), SLURMEnvironment(auto_requeue=False)]
        if trainer_cfg.get("logger") is None:
            kwargs["logger"] = self._loggers()
        kwargs.setdefault("default_root_dir", str(self.run_dir.path))
        return super().instantiate_trainer(**kwargs)

    def _loggers(self) -> list[Any]:
        recipe = yaml.safe_load(self.recipe_text)
        wandb = WandbLogger(
            name=self.run_dir.path.name,
            project=self.run_dir.path.parent.name,
            # absolute: a W&B service inherited through WANDB_SERVICE may run in another directory
            save_dir=str(self.run_dir.path.resolve()),
            id=self.run_dir.wandb_id,
            resume="allow",
            mode=wandb_mode(),
            config={**recipe, "augment_pipelines": pipelines_config(self.datamodule)},
            job_type=self.subcommand,
        )
        # CSV in a new version folder per invocation: Lightning's CSV logger deletes an
        # existing metrics.csv in the folder it writes to.
        return [wandb, CSVLogger(save_dir=str(self.run_dir.path), name="csv")]

    # -- stages -------------------------------------------------------------------------------
    def _run_subcommand(self, subcommand: str) -> None:
        if self.run_stage:
            super()._run_subcommand(subcommand)

    def before_fit(self) -> None:
        if "LOCAL_RANK" not in os.environ:
            # the processes Lightning starts for the other devices inherit this: one run dir
            os.environ[RUN_DIR_ENV] = str(self.run_dir.path)
        _create_run_dir(self.run_dir, self.recipe_text)
        save_pipelines(self.run_dir.path, self.datamodule)
        cfg = self.config_init["fit"]
        if cfg.get("ckpt_path") is None:
            cfg["ckpt_path"] = resume_checkpoint(self.run_cfg, self.run_dir)

    def fit(self, model: Classifier, datamodule: DataModule, **kwargs: Any) -> None:
        self.trainer.fit(model, datamodule=datamodule, **kwargs)
        last = next(c for c in self.trainer.callbacks if isinstance(c, LastCheckpoint))
        if last.preempted:
            # the requeued job (or the next `fit` with resume: auto) continues from last.ckpt
            self.result = StageResult("fit", {}, self.run_dir.path, {"fit/preempted_at_step": self.trainer.global_step})
            return
        best = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else ""
        # fit reports the validation metrics of the checkpoint it calls best, not the last epoch
        metrics = self.trainer.validate(model, datamodule=datamodule, ckpt_path=best or None, verbose=False)[0]
        self._finish(
            "fit",
            metrics,
            {"fit/best_checkpoint": Path(best).name if best else None, "fit/epochs": self.trainer.current_epoch},
        )

    def validate(self, model: Classifier, datamodule: DataModule, **kwargs: Any) -> None:
        self._finish("validate", self.trainer.validate(model, datamodule=datamodule, **{**kwargs, "verbose": False})[0])

    def test(self, model: Classifier, datamodule: DataModule, **kwargs: Any) -> None:
        metrics = self.trainer.test(model, datamodule=datamodule, **{**kwargs, "verbose": False})[0]
        plots = evaluation_plots(self.trainer, model, datamodule, self.run_dir.path)
        self._finish("test", metrics, {"test/checkpoint": str(kwargs.get("ckpt_path")), **plots})

    def predict(self, model: Classifier, datamodule: DataModule, **kwargs: Any) -> None:
        batches = self.trainer.predict(model, datamodule=datamodule, **kwargs)
        out = self.run_dir.path / "predictions.csv"
        _write_predictions(out, batches)
        self.result = StageResult("predict", {}, self.run_dir.path, {"predictions": str(out)})

    def _finish(self, stage: str, metrics: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
        metrics = {k: float(v) for k, v in metrics.items()}
        extra = extra or {}
        _write_metrics(self.run_dir, {**metrics, **extra})
        self.result = StageResult(stage, metrics, self.run_dir.path, extra)


def check_recipe_files(args: list[str]) -> None:
    """Name the file when a recipe given by ``--config`` is not readable YAML (jsonargparse does not)."""
    for i, arg in enumerate(args):
        if arg in ("-c", "--config") and i + 1 < len(args):
            path = args[i + 1]
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        else:
            continue
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read recipe {path!r}: {e.strerror}", "--config") from None
        try:
            recipe = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"recipe {path!r} is not valid YAML: {e}", "--config") from None
        if not isinstance(recipe, dict):
            raise ConfigError(f"recipe {path!r} must be a mapping of keys, got {type(recipe).__name__}", "--config")


def explain_parse_error(message: str, parser: LightningArgumentParser | None) -> str:
    """jsonargparse's message, plus the closest valid keys for an unknown one."""
    message = message.strip()
    unknown = re.search(r"unrecognized arguments: --([\w.]+)|accept (?:option|nested key) '([\w.]+)'", message)
    if unknown and parser is not None:
        key = unknown.group(1) or unknown.group(2)
        known = [k for k in parser.get_defaults().keys() if k not in ("config", "__default_config__")]
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
        group = key.rsplit(".", 1)[0] + "." if "." in key else ""
        siblings = [k for k in known if k.startswith(group) and k.count(".") == key.count(".")]
        if close:
            message += f"; did you mean {' or '.join(close)}?"
        if siblings and len(siblings) <= 20:
            message += f" (valid: {', '.join(siblings)})"
    return message


@rank_zero_only
def _create_run_dir(run_dir: RunDir, recipe_text: str) -> None:
    """Make the run dir; write config.yaml and the W&B id only if absent (a resume keeps them)."""
    run_dir.checkpoints.mkdir(parents=True, exist_ok=True)
    if not run_dir.config_file.exists():
        atomic_write_text(run_dir.config_file, recipe_text)
    if not (run_dir.path / "wandb_id").exists():
        atomic_write_text(run_dir.path / "wandb_id", run_dir.wandb_id + "\n")


@rank_zero_only
def _write_metrics(run_dir: RunDir, metrics: dict[str, Any]) -> None:
    run_dir.write_metrics(metrics)


@rank_zero_only
def _write_predictions(path: Path, batches: list[dict[str, torch.Tensor]]) -> None:
    probs = torch.cat([b["probs"] for b in batches])
    preds = torch.cat([b["pred"] for b in batches])
    targets = torch.cat([b["target"] for b in batches]) if "target" in batches[0] else None
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "pred"] + (["target"] if targets is not None else []) + [f"prob_{c}" for c in range(probs.shape[1])])
        for i in range(len(preds)):
            row = [i, int(preds[i])] + ([int(targets[i])] if targets is not None else [])
            w.writerow(row + [f"{p:.6f}" for p in probs[i].tolist()])
    tmp.replace(path)


def run(argv: list[str]) -> StageResult:
    """Run one stage, ``argv`` as after ``trainkit`` (``["fit", "--config", "r.yaml", ...]``).

    Raises:
        ConfigError: bad input found after parsing (unknown names, bad values, missing runs).
        SystemExit: code 2 for input jsonargparse rejects (unknown keys, wrong types, bad YAML).
    """
    try:
        cli = TrainkitCLI(argv)
        assert cli.result is not None, "every stage sets a result"
        return cli.result
    finally:
        _finish_wandb()


def _finish_wandb() -> None:
    import wandb

    if wandb.run is not None:
        wandb.finish()
