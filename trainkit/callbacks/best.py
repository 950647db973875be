"""The one "best" checkpoint of a fit, and a user's own ModelCheckpoints beside it.

``best.ckpt`` is ranked by ``checkpoint.monitor``/``mode`` (or early stopping's metric); ``fit``
reports it and ``trainkit test`` loads it. A ``ModelCheckpoint`` in ``trainer.callbacks`` would
otherwise become Lightning's ``trainer.checkpoint_callback`` (the first one in the list) and
silently redefine what ``fit`` calls best.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint

from trainkit.errors import ConfigError

log = logging.getLogger(__name__)


def best_checkpoint(checkpoints: Path, monitor: str, mode: str) -> ModelCheckpoint:
    """trainkit's ``checkpoints/best.ckpt``: the top-1 checkpoint by ``monitor``, its state's
    paths relative to ``checkpoints`` (the run dir may be moved or copied)."""
    from trainkit.callbacks.checkpointing import BestCheckpoint

    return BestCheckpoint(
        dirpath=checkpoints,
        filename="best",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        save_last=False,  # trainkit's LastCheckpoint keeps last.ckpt current
        auto_insert_metric_name=False,
    )


def user_checkpoints(callbacks: list[Any], best: ModelCheckpoint, checkpoints: Path) -> None:
    """A ``ModelCheckpoint`` of the user's in ``trainer.callbacks`` keeps its own files beside
    trainkit's; "best" stays ``checkpoint.monitor`` (``best.ckpt``), for fit and test alike.

    Raises:
        ConfigError: one that would keep the same best as trainkit's (Lightning cannot hold
            two such in one checkpoint), or write into ``checkpoints/`` itself.
    """
    for cb in callbacks:
        if not isinstance(cb, ModelCheckpoint) or cb is best:
            continue
        if cb.state_key == best.state_key:
            raise ConfigError(
                f"a ModelCheckpoint monitoring {cb.monitor} ({cb.mode}) repeats trainkit's own best.ckpt; "
                f"'best' is chosen by checkpoint.monitor and checkpoint.mode: remove the callback or monitor "
                f"something else", "trainer.callbacks")
        if cb.dirpath is None:
            cb.dirpath = str(checkpoints / "extra")
        elif Path(cb.dirpath).resolve() == checkpoints.resolve():
            raise ConfigError(
                f"a ModelCheckpoint writing into {str(checkpoints)!r} would mix with best.ckpt and last.ckpt: "
                f"give it another dirpath (or none: {checkpoints / 'extra'})", "trainer.callbacks")
        log.info("trainer.callbacks: your ModelCheckpoint (monitor %s) saves to %s; best.ckpt, which fit reports "
                 "and test loads, is ranked by checkpoint.monitor %s (%s)", cb.monitor, cb.dirpath, best.monitor, best.mode)
