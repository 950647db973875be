"""The callbacks every ``fit`` gets, in the order Lightning must hold them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from trainkit.callbacks.best import best_checkpoint, user_checkpoints
from trainkit.callbacks.checkpointing import LastCheckpoint
from trainkit.callbacks.curves import FitCurves
from trainkit.callbacks.diagnostics import DiagnosticsConfig, diagnostics_callbacks
from trainkit.callbacks.early_stopping import EarlyStoppingConfig, SmoothedEarlyStopping
from trainkit.callbacks.group import CallbackGroup
from trainkit.callbacks.progress import EpochLine, OneLineSummary
from trainkit.callbacks.rng import RNGState
from trainkit.callbacks.throughput import Throughput


def add_fit_callbacks(callbacks: list[Any], checkpoints: Path, ckpt_cfg: Any, es_cfg: EarlyStoppingConfig | None,
                      diag_cfg: DiagnosticsConfig, world: Callback, summary: bool) -> ModelCheckpoint:
    """Add trainkit's fit callbacks to the user's ``callbacks`` (in place); returns the one
    ``best.ckpt`` checkpoint.

    ``best.ckpt`` goes first of the checkpoint callbacks, so Lightning's
    ``trainer.checkpoint_callback`` is trainkit's "best"; ``last.ckpt`` is a ``Checkpoint`` after
    it (see :class:`~trainkit.callbacks.checkpointing.LastCheckpoint`). trainkit's own per-step
    callbacks are one :class:`~trainkit.callbacks.group.CallbackGroup`: Lightning dispatches every
    hook of every callback on every step.
    """
    best = best_checkpoint(checkpoints, ckpt_cfg.monitor, ckpt_cfg.mode)
    callbacks.insert(0, best)
    user_checkpoints(callbacks, best, checkpoints)
    callbacks += [
        LastCheckpoint(checkpoints / "last.ckpt", ckpt_cfg.every_n_steps),
        CallbackGroup([*diagnostics_callbacks(diag_cfg), world, RNGState(), FitCurves(), Throughput(),
                       EpochLine(ckpt_cfg.monitor, best)]),
    ]
    if summary:
        callbacks.append(OneLineSummary())
    if es_cfg is not None:
        callbacks.append(SmoothedEarlyStopping(es_cfg))
    return best
