"""Record the world a checkpoint was trained in, and report a change on resume."""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from trainkit.optim.scaling import lr_factor

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
    """Store :func:`world_of` in checkpoints; on a resume in another world, report it and
    re-scale the restored learning rates to the new global batch.

    The optimizer and scheduler states in a checkpoint hold the lr scaled for the old global
    batch; with ``model.lr_scaling`` they are multiplied by ``factor(new) / factor(old)``
    before Lightning loads them, so a job resumed on twice the devices trains as if it had
    started there.

    Args:
        batch_size: per-device batch size.
        lr_scaling: ``(rule, base_batch_size)`` of ``model.lr_scaling`` (rule ``none``: keep).
    """

    def __init__(self, batch_size: int, lr_scaling: tuple[str, int] = ("none", 256)):
        self.batch_size = batch_size
        self.rule, self.base = lr_scaling
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
            ratio = lr_factor(self.rule, now["global_batch"], self.base) / lr_factor(self.rule, before["global_batch"], self.base)
            rescale_lrs(checkpoint, ratio)
            self.change = (
                f"world size changed since the checkpoint: {before['world_size']} -> {now['world_size']} processes, "
                f"global batch {before['global_batch']} -> {now['global_batch']}; "
                f"lr x {ratio:.4g} ({self.rule} scaling, base {self.base})"
            )
            rank_zero_warn(self.change)


def rescale_lrs(checkpoint: dict, ratio: float) -> None:
    """Multiply every learning rate a checkpoint restores (optimizer groups, scheduler bases)."""
    if ratio == 1.0:
        return
    for state in checkpoint.get("optimizer_states", []):
        for group in state.get("param_groups", []):
            for key in ("lr", "initial_lr"):
                if key in group:
                    group[key] *= ratio
    for sched in checkpoint.get("lr_schedulers", []):
        for key in ("base_lrs", "_last_lr"):
            if key in sched:
                sched[key] = [lr * ratio for lr in sched[key]]
