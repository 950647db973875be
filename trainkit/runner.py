"""The Lightning stages (fit, validate, test, predict) driven by a recipe, via LightningCLI.

``run(argv)`` parses a recipe plus dotted overrides, builds the model, data module and
trainer, runs the stage in its run dir and returns a :class:`StageResult`; the CLI prints it.
Bad input raises :class:`~trainkit.errors.ConfigError` (or exits 2 from jsonargparse) before
any file is written.
"""

from __future__ import annotations

import os
import sys
import warnings
from argparse import ArgumentError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from trainkit import safe_yaml
from trainkit.callbacks.checkpointing import BestCheckpoint, LastCheckpoint
from trainkit.callbacks.curves import FitCurves
from trainkit.callbacks.early_stopping import EarlyStoppingConfig, SmoothedEarlyStopping
from trainkit.callbacks.rng import RNGState
from trainkit.callbacks.throughput import Throughput, throughput_record
from trainkit.callbacks.diagnostics import DiagnosticsConfig, diagnostics_callbacks
from trainkit.callbacks.world import WorldRecord
from trainkit.checkpoints import check_compatible, first_loadable, load_checkpoint, resume_point
from trainkit.data.datamodule import DataModule
from trainkit.data.preview import augment_seed, pipelines_config, save_pipelines
from trainkit.ensemble import check_ensemble, run_ensemble
from trainkit.errors import ConfigError
from trainkit.evaluation import evaluation_plots
from trainkit.recipe import CheckpointConfig, check_nulls, check_seed, explain_parse_error
from trainkit.module import Classifier
from trainkit.optim.scaling import check_lr_scaling
from trainkit.preemption import PREEMPTION, Preempted
from trainkit.predict import output_path, resolve_input, write_predictions
from trainkit.registry import import_from_cwd
from trainkit.rundir import RUN_DIR_ENV, RunConfig, RunDir, atomic_write_text, resolve_run_dir, resume_candidates, wandb_mode
from trainkit.runlock import RunLock, launcher_rank
from trainkit.secrets import argv_has_secret, redact
from trainkit.verdict import fit_report

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
        self._stage = args[0] if args and args[0] in LightningCLI.subcommands() else None
        self.lock: RunLock | None = None
        try:
            with warnings.catch_warnings():
                # argv is given explicitly on purpose (the CLI passes sys.argv[1:], tests their own)
                warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
                self._start(args)
        finally:
            if self.lock is not None:
                finish_wandb()  # W&B writes into the run dir until it finishes
                self.lock.release()
            if run_stage:
                PREEMPTION.clear()  # a signal concerns the run it arrived in, not a next one in this process

    def _start(self, args: list[str]) -> None:
        super().__init__(
            Classifier,
            DataModule,
            save_config_callback=None,  # trainkit writes config.yaml itself, only for new runs
            seed_everything_default=0,
            args=args,
            auto_configure_optimizers=False,  # optimizers come from model.optimizer by name
            # no abbreviations: --trainer.max_epoch must not silently mean max_epochs
            # recipes and values load with trainkit's safe loader (aliases on a budget: trainkit.safe_yaml)
            parser_kwargs={
                "default_env": False,
                "exit_on_error": False,
                "allow_abbrev": False,
                "parser_mode": safe_yaml.register(),
                **{stage: {"allow_abbrev": False, "parser_mode": safe_yaml.MODE} for stage in self.subcommands()},
            },
        )

    def subcommands(self) -> dict[str, set[str]]:  # type: ignore[override]
        """Only the stage this invocation runs. LightningCLI builds a parser per subcommand; all
        four cost every command (and each parse-only check) ~60% of its start-up for three it
        never uses. An unknown stage gets them all, so the error lists the valid ones."""
        stages = LightningCLI.subcommands()
        return {self._stage: stages[self._stage]} if self._stage else stages

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(RunConfig, "run")
        parser.add_class_arguments(CheckpointConfig, "checkpoint", instantiate=False)
        parser.add_argument("--early_stopping", type=Optional[EarlyStoppingConfig], default=None, help="early stopping (null: off)")
        parser.add_class_arguments(DiagnosticsConfig, "diagnostics", instantiate=False)
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.input_shape", "model.input_shape", apply_on="instantiate")
        parser.link_arguments("seed_everything", "data.seed", compute_fn=augment_seed)
        parser.add_argument("--ensemble", type=Optional[str], default=None,
                            help="test/validate: evaluate an ensemble of the run's checkpoints (snapshots)")

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        # LightningCLI's only per-subcommand hook (add_arguments_to_parser serves them all):
        # --input belongs to predict alone and reaches self.predict as ckpt_path does
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":
            parser.add_argument("--input", type=str, default="test", help="train|val|test, a folder of images or a CSV of features")
            self._subcommand_method_arguments[subcommand].append("input")
        return parser

    # -- parsing: resolve the run dir and checkpoint before anything is built ---------------
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        safe_yaml.check_recipe_files(args)
        import_from_cwd()  # class paths jsonargparse imports (trainer.callbacks, ...) as python -m would
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as e:
            stage_parser = self._subcommand_parsers.get(args[0] if args else "")
            raise ConfigError(explain_parse_error(str(e), stage_parser)) from None
        stage = self.config.subcommand
        cfg = self.config[stage]
        check_seed(cfg.get("seed_everything"))
        check_nulls(cfg, {"run": RunConfig, "checkpoint": CheckpointConfig, "model": Classifier, "data": DataModule,
                          "trainer": Trainer})
        self.run_cfg = RunConfig(**cfg.run.as_dict())
        self.ckpt_cfg = CheckpointConfig(**cfg.checkpoint.as_dict())
        self.ensemble = check_ensemble(cfg.get("ensemble"), stage)
        es = cfg.get("early_stopping")
        self.es_cfg = EarlyStoppingConfig(**es.as_dict()) if es is not None else None
        if self.es_cfg and (self.ckpt_cfg.monitor, self.ckpt_cfg.mode) != (self.es_cfg.monitor, self.es_cfg.mode):
            # best.ckpt is ranked by the metric that stops the run: one criterion, one best epoch
            rank_zero_info(f"checkpoint.monitor follows early_stopping: {self.es_cfg.monitor} ({self.es_cfg.mode})")
            self.ckpt_cfg.monitor, self.ckpt_cfg.mode = self.es_cfg.monitor, self.es_cfg.mode
            cfg.checkpoint.monitor, cfg.checkpoint.mode = self.es_cfg.monitor, self.es_cfg.mode
        self.diag_cfg = DiagnosticsConfig(**cfg.diagnostics.as_dict())
        recipes = cfg.get("config") or []
        self.recipe_path = str(recipes[0]) if recipes else None
        self.run_dir = resolve_run_dir(self.run_cfg, self.recipe_path, stage)
        # the saved recipe names its run, so `fit --config <run dir>/config.yaml` continues it
        cfg.run.experiment, cfg.run.name = self.run_dir.path.parent.name, self.run_dir.path.name
        if stage != "fit":
            # best/last resolve in the run dir; LightningCLI then reads the checkpoint's hparams
            cfg.ckpt_path = str(self.run_dir.checkpoint(cfg.ckpt_path or "best"))
        if cfg.get("ckpt_path"):
            load_checkpoint(cfg.ckpt_path, "ckpt_path")  # refused or corrupt: exit 2 before anything runs
        self.recipe_text = self._parser(stage).dump(cfg, skip_none=False)
        recipe = safe_yaml.load_yaml(self.recipe_text, "the resolved recipe")
        if redact(recipe) != recipe:
            # config.yaml and the W&B config never hold credentials (see trainkit.secrets)
            self.recipe_text = yaml.safe_dump(redact(recipe), sort_keys=False)

    def after_instantiate_classes(self) -> None:
        # load and split the data now, so data errors exit 2 before the run dir is touched
        self.datamodule.setup(self.subcommand)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_cfg = self.config_init[self.subcommand]["trainer"]
        callbacks = list(trainer_cfg.get("callbacks") or [])
        if self.subcommand == "fit":
            callbacks.append(
                BestCheckpoint(  # paths relative to the run dir: it may be moved or copied
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
                RNGState(),
                FitCurves(),
                Throughput(),
            ]
            if self.es_cfg is not None:
                callbacks.append(SmoothedEarlyStopping(self.es_cfg))
        kwargs["callbacks"] = callbacks
        if SLURMEnvironment.detect() and not TorchElasticEnvironment.detect():
            # trainkit's LastCheckpoint checkpoints and requeues on SIGUSR1 instead of Lightning's handler
            kwargs["plugins"] = [*(trainer_cfg.get("plugins") or []), SLURMEnvironment(auto_requeue=False)]
        if trainer_cfg.get("logger") is None:
            kwargs["logger"] = self._loggers()
        kwargs.setdefault("default_root_dir", str(self.run_dir.path))
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, ValueError, TypeError) as e:
            # e.g. more GPUs than the machine has, an unknown accelerator or strategy, devices: -1
            raise ConfigError(str(e), "trainer") from None
        cores = os.cpu_count() or 1
        if isinstance(trainer.accelerator, CPUAccelerator) and trainer.num_devices > cores:
            raise ConfigError(
                f"{trainer.num_devices} CPU processes requested, but this machine has {cores} cores "
                f"(valid: 1 to {cores}, or another accelerator)",
                "trainer.devices",
            )
        return trainer

    def _loggers(self) -> list[Any]:
        import wandb as wandb_lib

        recipe = safe_yaml.load_yaml(self.recipe_text, "the resolved recipe")
        # a `trainkit sweep` trial (run dir <experiment>/sweep-<study>/trial-N): the experiment's
        # project, grouped under the sweep's name
        group = os.environ.get("TRAINKIT_SWEEP") or None
        wandb = WandbLogger(
            name=self.run_dir.path.name,
            project=self.run_dir.path.parent.parent.name if group else self.run_dir.path.parent.name,
            group=group,
            # absolute: a W&B service inherited through WANDB_SERVICE may run in another directory
            save_dir=str(self.run_dir.path.resolve()),
            id=self.run_dir.wandb_id,
            resume="allow",
            mode=wandb_mode(),
            config={**recipe, "augment_pipelines": pipelines_config(self.datamodule)},
            job_type=self.subcommand,
            # W&B's metadata records the command line: leave it out when it carries a secret
            settings=wandb_lib.Settings(x_disable_meta=argv_has_secret(sys.argv)),
        )
        # CSV in a new version folder per invocation: Lightning's CSV logger deletes an
        # existing metrics.csv in the folder it writes to.
        return [wandb, CSVLogger(save_dir=str(self.run_dir.path), name="csv")]

    # -- stages -------------------------------------------------------------------------------
    def _run_subcommand(self, subcommand: str) -> None:
        if not self.run_stage:
            return
        if launcher_rank() == 0:
            # before anything is written to the run dir; the job's other ranks never take it
            self.lock = RunLock(self.run_dir.path).acquire()
        cfg = self.config_init[subcommand]
        if cfg.get("weights_only") is None:
            # checkpoints hold tensors and plain data only: never unpickle arbitrary objects
            cfg["weights_only"] = True
        super()._run_subcommand(subcommand)

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
            rank_zero_info(f"resuming from {found[0]}: training continues at {resume_point(found[1])}")
        if "LOCAL_RANK" not in os.environ:
            # the processes Lightning starts for the other devices inherit this: one run dir
            os.environ[RUN_DIR_ENV] = str(self.run_dir.path)
        create_run_dir(self.run_dir, self.recipe_text)
        save_pipelines(self.run_dir.path, self.datamodule)

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
        if PREEMPTION.received:
            rank_zero_info(f"{PREEMPTION.name} arrived after training ended: finishing the last steps (the final "
                           "validation and metrics); nothing is left to requeue")
        best = self.trainer.checkpoint_callback.best_model_path if self.trainer.checkpoint_callback else ""
        # before validate(): loading best.ckpt there restores the callbacks' states of that epoch
        report = fit_report(self.trainer, best, datamodule.num_classes)
        # fit reports the validation metrics of the checkpoint it calls best, not the last epoch
        metrics = first(self.trainer.validate(
            model, datamodule=datamodule, ckpt_path=best or None, verbose=False, weights_only=True
        ))
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

    def validate(self, model: Classifier, datamodule: DataModule, **kwargs: Any) -> None:
        if self.ensemble:
            return self._finish("validate", *run_ensemble(self, "val"))
        self._finish("validate", first(self.trainer.validate(model, datamodule=datamodule, **{**kwargs, "verbose": False})))

    def test(self, model: Classifier, datamodule: DataModule, **kwargs: Any) -> None:
        if self.ensemble:
            return self._finish("test", *run_ensemble(self, "test"))
        metrics = first(self.trainer.test(model, datamodule=datamodule, **{**kwargs, "verbose": False}))
        plots = evaluation_plots(self.trainer, model, datamodule, self.run_dir.path)
        self._finish("test", metrics, {"test/checkpoint": str(kwargs.get("ckpt_path")), **plots})

    def predict(self, model: Classifier, datamodule: DataModule, input: str = "test", **kwargs: Any) -> None:
        inp = resolve_input(input, datamodule)
        loader = torch.utils.data.DataLoader(inp.dataset, batch_size=datamodule.batch_size, num_workers=datamodule.num_workers)
        batches = self.trainer.predict(model, dataloaders=loader, **kwargs)
        out = output_path(self.run_dir.path, inp.name)
        _write_predictions(out, batches, inp, datamodule.data.classes)
        self.result = StageResult("predict", {}, self.run_dir.path, {"predictions": str(out)})

    def _finish(self, stage: str, metrics: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
        metrics = {k: float(v) for k, v in metrics.items()}
        extra = extra or {}
        _write_metrics(self.run_dir, {**metrics, **extra})
        self.result = StageResult(stage, metrics, self.run_dir.path, extra)


@rank_zero_only
def create_run_dir(run_dir: RunDir, recipe_text: str) -> None:
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
def _write_predictions(path: Path, *args: Any) -> None:
    write_predictions(path, *args)


def run(argv: list[str]) -> StageResult:
    """Run one stage, ``argv`` as after ``trainkit`` (``["fit", "--config", "r.yaml", ...]``).

    Raises:
        ConfigError: bad input found after parsing (unknown names, bad values, missing runs).
        SystemExit: code 2 for input jsonargparse rejects (unknown keys, wrong types, bad YAML).
    """
    try:
        cli = TrainkitCLI(argv)
        assert cli.result is not None, "every stage sets a result"
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Lightning leaves the process group up; a gloo group torn down by interpreter exit
            # has aborted a rank (SIGABRT) after a finished run
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
        return cli.result
    finally:
        finish_wandb()


def finish_wandb() -> None:
    import wandb

    if wandb.run is not None:
        wandb.finish()


def first(results: list[dict[str, float]]) -> dict[str, float]:
    """The metrics of a validate/test call: none when its batches are limited to 0."""
    return results[0] if results else {}
