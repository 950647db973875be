"""Record the world a checkpoint was trained in, and report a change on resume."""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

log = logging.getLogger(__name__)


def world_of(trainer: pl.Trainer, batch_size: int) -> dict[str, int]:
    """World size, nodes, accumulation and the global batch of a running trainer."""
    accum = int(trainer.accumulate_grad_batches)
    return {
        "world_size": int(trainer.world_size),
        "num_nodes": int(trainer.num_nodes),
        "accumulate_grad_batches": accum,
        "batch_size": int(batch_size),
        "global_batch": int(batch_size) * int(trainer.world_size) * accum,
    }


class WorldRecord(Callback):
    """Store :func:`world_of` in checkpoints; warn when a resumed run has another world.

    The warning names both worlds and global batches; the learning rate follows the global
    batch of the resumed run (see the lr plan printed at start).
    """

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.change: str | None = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {}

    @override
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint["trainkit_world"] = world_of(trainer, self.batch_size)

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        before, now = checkpoint.get("trainkit_world"), world_of(trainer, self.batch_size)
        if before and (before["world_size"], before["global_batch"]) != (now["world_size"], now["global_batch"]):
            self.change = (
                f"world size changed since the checkpoint: {before['world_size']} -> {now['world_size']} processes, "
                f"global batch {before['global_batch']} -> {now['global_batch']}"
            )
            rank_zero_warn(self.change)
