"""Per-epoch loss curves for the fit verdict: val loss, and train loss measured as val loss is.

The logged ``train/loss`` is a running mean over an epoch of changing weights, in train mode
(dropout on, batch-norm batch statistics, augmentation, label smoothing, L1/L2 penalties), so
it is not comparable with ``val/loss``. After each validation this callback also measures the
plain cross-entropy of the current model in eval mode on a fixed subset of the training split,
preprocessed as validation data is; it is logged as ``train/eval_loss``.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader
from typing_extensions import override


class FitCurves(Callback):
    """Record ``val/loss`` and the eval-mode training-subset loss after each validation of ``fit``.

    Args:
        subset_size: training samples in the fixed, seeded subset (all if the split is smaller).
    """

    def __init__(self, subset_size: int = 1000):
        self.subset_size = subset_size
        self.val_loss: list[float] = []
        self.train_loss: list[float] = []
        self._loader: DataLoader | None = None

    def _subset(self, trainer: pl.Trainer) -> DataLoader:
        if self._loader is None:
            dm = trainer.datamodule
            rng = np.random.default_rng(0)  # the same samples every epoch: a curve, not noise
            idx = np.sort(rng.permutation(len(dm.indices["train"]))[: self.subset_size])
            # a file source's images are decoded in workers, as in training; arrays need none
            workers = dm.num_workers if dm.kind != "memory" else 0
            self._loader = DataLoader(dm.eval_split("train", indices=idx), batch_size=dm.batch_size, num_workers=workers)
        return self._loader

    @torch.no_grad()
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float:
        """Mean cross-entropy of the current model, eval mode, on the training subset."""
        was_training = pl_module.training
        pl_module.eval()
        total, n = 0.0, 0
        try:
            for x, y in self._subset(trainer):
                # the model's dtype too: with trainer.precision 64-true or bf16-true it is not float32
                logits = pl_module(x.to(pl_module.device, pl_module.dtype if x.is_floating_point() else x.dtype)).float()
                total += float(F.cross_entropy(logits, y.to(pl_module.device), reduction="sum"))
                n += len(y)
        finally:
            pl_module.train(was_training)
        return total / max(n, 1)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or "val/loss" not in trainer.callback_metrics:
            return
        self.val_loss.append(float(trainer.callback_metrics["val/loss"]))
        self.train_loss.append(self.measure(trainer, pl_module))
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({"train/eval_loss": self.train_loss[-1]}, step=trainer.global_step)

    @override
    def state_dict(self) -> dict[str, Any]:
        # kept in checkpoints, so a resumed run's verdict sees the whole curve
        return {"val_loss": list(self.val_loss), "train_loss": list(self.train_loss)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.val_loss = list(state_dict.get("val_loss", []))
        self.train_loss = list(state_dict.get("train_loss", []))
