"""The Lightning stages (fit, validate, test, predict) driven by a recipe, via LightningCLI.

``run(argv)`` parses a recipe plus dotted overrides, builds the model, data module and
trainer (here), runs the stage in its run dir (:mod:`trainkit.stages`) and returns a
:class:`~trainkit.stages.StageResult`; the CLI prints it.
Bad input raises :class:`~trainkit.errors.ConfigError` (or exits 2 from jsonargparse) before
any file is written.
"""

from __future__ import annotations

import logging
import os
import warnings
from argparse import ArgumentError
from typing import Any, Optional

import torch
import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.callbacks.progress import ProgressBar as LightningProgressBar
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from trainkit import safe_yaml
from trainkit.callbacks.early_stopping import EarlyStoppingConfig
from trainkit.callbacks.fit import add_fit_callbacks
from trainkit.callbacks.progress import ProgressBar
from trainkit.callbacks.diagnostics import DiagnosticsConfig
from trainkit.callbacks.world import WorldRecord
from trainkit.checkpoints import load_checkpoint
from trainkit.data.datamodule import DataModule
from trainkit.data.preview import augment_seed, pipelines_config
from trainkit import cli_help
from trainkit.console import attach_run_log, detach_run_log
from trainkit.ensemble import check_ensemble
from trainkit.errors import ConfigError
from trainkit.loggers import CSV_FILE, RunCSVLogger, finish_wandb, start_wandb, wandb_logger
from trainkit.recipe import CheckpointConfig, check_nulls, check_seed, explain_parse_error, ints_stay_ints
from trainkit.module import Classifier
from trainkit import gpu_defaults
from trainkit.gpu_defaults import GPUConfig
from trainkit.nn.compile import check_toolchain
from trainkit.optim.scaling import check_lr_scaling
from trainkit.preemption import PREEMPTION
from trainkit.registry import import_from_cwd
from trainkit.rundir import RunConfig, resolve_run_dir
from trainkit.run_recipe import (
    check_against_checkpoint, check_data_matches, with_run_recipe,
)
from trainkit.runlock import RunLock, launcher_rank
from trainkit.secrets import redact
from trainkit.stages import StageResult, Stages

log = logging.getLogger(__name__)
EVALUATIONS = ("validate", "test", "predict")


class TrainkitCLI(Stages, LightningCLI):
    """LightningCLI with trainkit's run dir, checkpoints, W&B logger and results."""

    def __init__(self, args: list[str], run_stage: bool = True):
        self.result: StageResult | None = None
        detach_run_log()  # this stage's records go to its own run dir once it is known
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
        ints_stay_ints(parser)
        parser.add_class_arguments(RunConfig, "run")
        parser.add_class_arguments(CheckpointConfig, "checkpoint", instantiate=False)
        parser.add_argument("--early_stopping", type=Optional[EarlyStoppingConfig], default=None, help="early stopping (null: off)")
        parser.add_class_arguments(DiagnosticsConfig, "diagnostics", instantiate=False)
        parser.add_class_arguments(GPUConfig, "gpu", instantiate=False)
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.input_shape", "model.input_shape", apply_on="instantiate")
        parser.link_arguments("data.data", "model.class_names", compute_fn=class_names, apply_on="instantiate")
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
        cli_help.tidy(parser, subcommand)
        return parser

    # -- parsing: resolve the run dir and checkpoint before anything is built ---------------
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        if args and args[0] in EVALUATIONS:
            # `trainkit test --run.name N`: the run's own config.yaml is the recipe
            args = [args[0], *with_run_recipe(args[1:])[0]]
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
        self.gpu_cfg = GPUConfig(**cfg.gpu.as_dict())
        recipes = cfg.get("config") or []
        self.recipe_path = str(recipes[0]) if recipes else None
        self.run_dir = resolve_run_dir(self.run_cfg, self.recipe_path, stage)
        # the saved recipe names its run, so `fit --config <run dir>/config.yaml` continues it
        cfg.run.experiment, cfg.run.name = self.run_dir.path.parent.name, self.run_dir.path.name
        self.eval_settings: dict[str, Any] = {}
        if stage != "fit":
            # best/last resolve in the run dir; LightningCLI then reads the checkpoint's hparams
            cfg.ckpt_path = str(self.run_dir.checkpoint(cfg.ckpt_path or "best"))
            ckpt = load_checkpoint(cfg.ckpt_path, "ckpt_path")  # refused or corrupt: exit 2 before anything runs
            self.ckpt_hparams = dict(ckpt.get("hyper_parameters") or {})
            self._check_evaluation(cfg.model.as_dict(), cfg.ckpt_path)
        elif cfg.get("ckpt_path"):  # fit --ckpt_path: refused or corrupt, exit 2 before anything runs
            load_checkpoint(cfg.ckpt_path, "ckpt_path")
        self.recipe_text = self._parser(stage).dump(cfg, skip_none=False)
        recipe = safe_yaml.load_yaml(self.recipe_text, "the resolved recipe")
        if redact(recipe) != recipe:
            # config.yaml and the W&B config never hold credentials (see trainkit.secrets)
            self.recipe_text = yaml.safe_dump(redact(recipe), sort_keys=False)

    def _check_evaluation(self, model_cfg: dict[str, Any], path: str) -> None:
        """The model is rebuilt from the checkpoint: refuse recipes that disagree with its
        network, keep the evaluation settings they give, name the training keys that cannot apply."""
        self.eval_settings, training = check_against_checkpoint(model_cfg, self.ckpt_hparams, path)
        if training:
            log.warning(
                "%s differ%s from the checkpoint's and cannot change a trained model; the evaluation uses "
                "the checkpoint's", ", ".join(training), "s" if len(training) == 1 else "")

    def before_instantiate_classes(self) -> None:
        stage = self.config.subcommand
        for key, value in self.eval_settings.items():
            # LightningCLI has just replaced the model's keys with the checkpoint's hparams;
            # evaluation settings (binned AUROC, memory format) are the command line's
            self.config[stage].model[key] = value

    def after_instantiate_classes(self) -> None:
        # load and split the data now, so data errors exit 2 before the run dir is touched
        self.datamodule.setup(self.subcommand)
        if self.subcommand in EVALUATIONS:
            path = self.config_init[self.subcommand]["ckpt_path"]
            check_data_matches(self.ckpt_hparams, self.datamodule.num_classes, self.datamodule.input_shape, path)
        es = self.es_cfg if self.subcommand == "fit" else None
        if es is not None and es.monitor.startswith("val/") and not len(self.datamodule.splits["val"]):
            raise ConfigError(f"monitors {es.monitor}, but data.val_fraction: 0 leaves no validation split "
                              "(monitor a train/ metric, or keep a validation split)", "early_stopping.monitor")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_cfg = self.config_init[self.subcommand]["trainer"]
        callbacks = list(trainer_cfg.get("callbacks") or [])
        self.best_checkpoint: ModelCheckpoint | None = None
        if trainer_cfg.get("enable_progress_bar") is not False and not any(isinstance(c, LightningProgressBar) for c in callbacks):
            callbacks.append(ProgressBar(validation_bar=self.subcommand != "fit"))
        if self.subcommand == "fit":
            self.best_checkpoint = add_fit_callbacks(
                callbacks, self.run_dir.checkpoints, self.ckpt_cfg, self.es_cfg, self.diag_cfg,
                WorldRecord(self.datamodule.batch_size, check_lr_scaling(self.model.lr_scaling)),
                summary=trainer_cfg.get("enable_model_summary") is not False)
        kwargs["callbacks"] = callbacks
        if SLURMEnvironment.detect() and not TorchElasticEnvironment.detect():
            # trainkit's LastCheckpoint checkpoints and requeues on SIGUSR1 instead of Lightning's handler
            kwargs["plugins"] = [*(trainer_cfg.get("plugins") or []), SLURMEnvironment(auto_requeue=False)]
        self._gpu_defaults(trainer_cfg, kwargs)  # before the loggers: the W&B config records them
        if trainer_cfg.get("logger") is None:
            kwargs["logger"] = self._loggers()
        kwargs.setdefault("default_root_dir", str(self.run_dir.path))
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, ValueError, TypeError) as e:
            # e.g. more GPUs than the machine has, an unknown accelerator or strategy, devices: -1
            raise ConfigError(str(e), "trainer") from None
        check_toolchain(self.model.compile_spec, trainer.strategy.root_device)
        cores = os.cpu_count() or 1
        if isinstance(trainer.accelerator, CPUAccelerator) and trainer.num_devices > cores:
            raise ConfigError(
                f"{trainer.num_devices} CPU processes requested, but this machine has {cores} cores "
                f"(valid: 1 to {cores}, or another accelerator)",
                "trainer.devices",
            )
        return trainer

    def _gpu_defaults(self, trainer_cfg: dict[str, Any], kwargs: dict[str, Any]) -> None:
        """TF32 matmuls and cuDNN autotuning where they help (trainkit.gpu_defaults), applied and
        written into the recipe this run records, with the resolved ``data.drop_last``."""
        precision, benchmark = gpu_defaults.resolve(
            self.gpu_cfg, trainer_cfg.get("benchmark"), gpu_defaults.on_cuda(trainer_cfg.get("accelerator")),
            images=len(self.model.hparams.input_shape) == 3, fixed_shapes=self.datamodule.batch_ramp is None,
            deterministic=bool(trainer_cfg.get("deterministic")))
        gpu_defaults.apply(precision)
        kwargs["benchmark"] = benchmark
        if self.datamodule.drop_last is None:  # data.drop_last: on when compiling (static shapes)
            self.datamodule.drop_last = self.model.compile_spec is not None
        recipe = yaml.safe_load(self.recipe_text)
        recipe.setdefault("gpu", {})["matmul_precision"] = precision
        recipe.setdefault("trainer", {})["benchmark"] = benchmark
        recipe.setdefault("data", {})["drop_last"] = bool(self.datamodule.drop_last)  # resolved with model.compile
        self.recipe_text = yaml.safe_dump(recipe, sort_keys=False)

    def _loggers(self) -> list[Any]:
        """The run's W&B run and (fit) its CSV history; predict logs nothing (it writes a CSV)."""
        if self.subcommand == "predict":
            return []
        config = None
        if self.subcommand == "fit":
            config = {**safe_yaml.load_yaml(self.recipe_text, "the resolved recipe"), "augment_pipelines": pipelines_config(self.datamodule)}
        loggers: list[Any] = [wandb_logger(self.subcommand, self.run_dir, config)]
        if self.subcommand == "fit":
            loggers.append(RunCSVLogger(self.run_dir.path / CSV_FILE))
        return loggers

    def _start_logging(self, record: dict[str, Any] | None = None) -> None:
        """The run's log file and its W&B run, once the run dir is there."""
        attach_run_log(self.run_dir.path)
        for logger in self.trainer.loggers:
            if isinstance(logger, WandbLogger):
                start_wandb(logger, self.subcommand, record)

    # -- running a stage (what each stage does: trainkit.stages) --------------------------
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


def class_names(data: Any) -> list[str]:
    """The class names of a data module's dataset (linked into ``model.class_names``)."""
    return [str(c) for c in data.classes]


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
