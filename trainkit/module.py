"""``Classifier``: the LightningModule that wraps any registered architecture.

Its typed ``__init__`` arguments are the ``model.*`` keys of a recipe; LightningCLI turns
them into the schema that validates recipes before anything runs.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric

from trainkit.metrics import STAGES, make_metrics, scores
from trainkit.models import build_arch
from trainkit.optim.optimizers import build_optimizer, check_optimizer


class Classifier(pl.LightningModule):
    """Classifier over an architecture from the registry.

    Args:
        arch: architecture registry name (``trainkit list archs``).
        arch_args: keyword arguments of that architecture (e.g. ``{depth: 3, width: 256}``).
        activation: hidden activation registry name (``trainkit list activations``).
        optimizer: ``{name: ..., lr: ..., <optimizer arguments>}`` (``trainkit list optimizers``).
        num_classes: number of classes; linked from the data module, not set in recipes.
        input_shape: shape of one input; linked from the data module, not set in recipes.
    """

    def __init__(
        self,
        arch: str = "mlp",
        arch_args: dict[str, Any] | None = None,
        activation: str = "relu",
        optimizer: dict[str, Any] = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True},  # noqa: B006
        num_classes: int = 10,
        input_shape: tuple[int, ...] = (1, 8, 8),
    ):
        super().__init__()
        # hparams go into checkpoints; the W&B config gets the whole recipe from the CLI instead
        self.save_hyperparameters(logger=False)
        check_optimizer(optimizer)  # fail on a bad spec now, not at the first step
        self.optimizer_spec = dict(optimizer)
        self.net = build_arch(arch, num_classes, input_shape, activation, arch_args)
        # keyed "<stage>_": a ModuleDict key "train" would clash with nn.Module.train
        self.metrics = nn.ModuleDict({f"{s}_": make_metrics(num_classes, s) for s in STAGES})
        self.losses = nn.ModuleDict({f"{s}_": MeanMetric() for s in STAGES})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def model_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        """The one step shared by train, val and test: loss, metric updates, epoch logging."""
        x, y, *soft = batch  # soft targets come with mixup/cutmix (data.mix); y stays the hard label
        logits = self(x)
        loss = F.cross_entropy(logits, soft[0] if soft else y)
        losses, metrics = self.losses[f"{stage}_"], self.metrics[f"{stage}_"]
        losses.update(loss.detach(), weight=y.numel())
        metrics.update(scores(logits), y)
        # Metric objects are computed and synced once per epoch by torchmetrics.
        self.log(f"{stage}/loss", losses, on_step=False, on_epoch=True, prog_bar=stage != "train")
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=False)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.model_step(batch, "train")
        # per-step values, local to the rank: no cross-rank sync on the hot path
        self.log("train/loss_step", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.model_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.model_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        probs = self(x).float().softmax(dim=-1)
        out = {"probs": probs, "pred": probs.argmax(dim=-1)}
        if isinstance(batch, (list, tuple)) and len(batch) > 1:
            out["target"] = batch[1]
        return out

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return build_optimizer(self.parameters(), self.optimizer_spec)
