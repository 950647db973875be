"""One sweep trial: a normal ``trainkit fit`` run dir inside the sweep dir, reporting to Optuna.

The trial runs in this process through :class:`~trainkit.runner.TrainkitCLI` with the sampled
values as overrides, plus :class:`PruneTrial`, which reports the monitored validation metric
after every epoch and stops the run when the pruner says so.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from typing_extensions import override

from trainkit.errors import ConfigError
from trainkit.runner import StageResult, TrainkitCLI, finish_wandb

log = logging.getLogger(__name__)

# read by TrainkitCLI._loggers: the W&B group (the sweep's name) of the trial being run
SWEEP_ENV = "TRAINKIT_SWEEP"


class PruneTrial(Callback):
    """Report ``metric`` to an Optuna trial after each validation epoch; stop when it is pruned.

    Written here rather than taken from optuna-integration's PyTorchLightningPruningCallback:
    that one raises ``TrialPruned`` out of ``Trainer.fit``, which would leave the trial's run dir
    without ``metrics.json``; stopping like EarlyStopping lets ``fit`` finish its run dir.

    Args:
        trial: the ``optuna.Trial`` being run.
        metric: a validation metric, ``val/acc``.
    """

    def __init__(self, trial: Any, metric: str):
        if not metric.startswith("val/"):
            raise ConfigError(f"pruning watches a validation metric (val/...), got {metric!r}", "--metric")
        self.trial, self.metric = trial, metric
        self.pruned_at: int | None = None
        self.stop_reason: str | None = None  # read by fit's report (trainkit.verdict.fit_report)

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # only fit's own validation epochs: not the sanity check, not fit's final validate
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is None:
            return
        self.trial.report(float(value), step=trainer.current_epoch)
        if self.trial.should_prune():
            self.pruned_at = trainer.current_epoch
            pruner = type(getattr(self.trial.study, "pruner", None)).__name__
            self.stop_reason = (f"pruned by the sweep ({pruner}) after epoch {self.pruned_at + 1}: {self.metric} "
                                f"{float(value):.4f} is not promising against earlier trials at that epoch")
            trainer.should_stop = True


class TrialCLI(TrainkitCLI):
    """TrainkitCLI with one more callback that does not end up in the run's ``config.yaml``."""

    def __init__(self, args: list[str], callback: Callback):
        self.extra_callback = callback
        super().__init__(args)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.append(self.extra_callback)
        return trainer


def trial_args(base: list[str], overrides: list[str], sweep_dir: Path, number: int, metric: str, direction: str) -> list[str]:
    """``fit`` arguments of trial ``number``: run dir ``<sweep dir>/trial-NNNN``, best checkpoint by the swept metric."""
    return [
        "fit",
        *base,
        *overrides,
        f"--run.root={sweep_dir.parent}",
        f"--run.experiment={sweep_dir.name}",
        f"--run.name=trial-{number:04d}",
        f"--checkpoint.monitor={metric}",
        f"--checkpoint.mode={'max' if direction == 'maximize' else 'min'}",
    ]


def run_trial(argv: list[str], trial: Any, metric: str, group: str) -> tuple[StageResult, PruneTrial]:
    """Run one trial's ``fit`` in this process; W&B groups it under ``group``."""
    pruner = PruneTrial(trial, metric)
    previous = os.environ.get(SWEEP_ENV)
    os.environ[SWEEP_ENV] = group
    try:
        cli = TrialCLI(argv, pruner)
        assert cli.result is not None, "fit sets a result"
        return cli.result, pruner
    finally:
        finish_wandb()
        if previous is None:
            os.environ.pop(SWEEP_ENV, None)
        else:
            os.environ[SWEEP_ENV] = previous
