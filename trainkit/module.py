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

from trainkit.errors import ConfigError
from trainkit.extras import extra_callbacks, optimizer_options, setup_extras
from trainkit.metrics import STAGES, StageMetrics, check_auroc_thresholds, check_positive_class, flush_chunk
from trainkit.nn.compile import check_compile, compile_net
from trainkit.nn.craft import build_net, setup_net
from trainkit.nn.prune import match_masks
from trainkit.nn.regularize import check_regularization, make_optimizer, penalty
from trainkit.optim.configure import check_schedule, configure
from trainkit.optim.optimizers import check_optimizer
from trainkit.optim.scaling import check_lr_scaling
from trainkit.secrets import redact


class Classifier(pl.LightningModule):
    """Classifier over an architecture from the registry.

    Args:
        arch: architecture registry name (``trainkit list archs``).
        arch_args: keyword arguments of that architecture (e.g. ``{depth: 3, width: 256}``).
        activation: hidden activation (``trainkit list activations``): a name or
            ``{name: leaky_relu, negative_slope: 0.1}``.
        norm: normalization (``trainkit list norms``): a name or ``{name: group, groups: 8}``;
            ``null`` keeps the architecture's default (mlp: none, cnn and resnets: batch).
        sync_batchnorm: batch norm as SyncBatchNorm; ``null``: when more than one process trains.
        dropout: dropout rate of the hidden layers (adapted models: every dropout layer);
            ``null`` keeps the architecture's default.
        init: ``{scheme: ..., <its arguments>, zero_init_last: false}`` (``trainkit list inits``);
            ``null`` keeps PyTorch's default init.
        label_smoothing: label smoothing of the training loss (val/test losses are plain).
        regularization: ``{no_decay_bias_norm, weight_decay_mode, l1, l2}``, see
            :mod:`trainkit.nn.regularize`.
        optimizer: ``{name: ..., lr: ..., <optimizer arguments>}`` (``trainkit list optimizers``).
        schedule: ``{name: ..., unit: epoch|step, warmup_epochs|warmup_steps: N, <arguments>}``
            (``trainkit list schedules``); ``null``: constant lr.
        lr_scaling: ``{rule: linear|sqrt|none, base_batch_size: 256}``: scale the lr by the
            run's real global batch; ``null``: no scaling.
        num_classes: number of classes; linked from the data module, not set in recipes.
        input_shape: shape of one input; linked from the data module, not set in recipes.
        freeze: fine-tuning (:mod:`trainkit.nn.transfer`): parameter-name patterns (``net.0.*``)
            frozen from the start.
        unfreeze: fine-tuning: ``{epoch: [patterns]}`` unfrozen at the start of that epoch.
        lr_mult: fine-tuning: ``{pattern: multiplier}`` of the lr for the parameters it matches.
        layer_decay: fine-tuning: layer-wise lr decay, the head at the full lr and each layer
            below it this factor times the next one's (``0.7``).
        ema: weight averaging (:mod:`trainkit.callbacks.averaging`): an exponential moving
            average of the weights, ``{decay: 0.999, warmup: true}``.
        swa: stochastic weight averaging of the weights from ``{start_epoch: N}`` on.
        prune: magnitude pruning ``{sparsity, scope, epochs}`` (:mod:`trainkit.nn.prune`; the
            lottery ticket: ``trainkit lottery``, with ``rounds`` and ``rewind_epoch``).
        auroc_thresholds: ``null``: exact AUROC, whose state keeps every score of the epoch;
            ``N`` (an integer >= 2): binned AUROC over ``N`` thresholds spaced evenly in
            log-odds, whose state does not grow with the number of samples (large evaluation
            sets, DDP); see :func:`trainkit.metrics.auroc_grid`.
        channels_last: keep conv weights and image batches in channels_last memory order
            (NHWC): faster convolutions on GPUs with tensor cores, above all with
            ``trainer.precision: bf16-mixed``; image inputs only.
        positive_class: binary tasks: the class (name or index) that precision, recall, F1 and
            the ROC/PR curves score; ``null``: index 1. Printed with the results.
        class_names: the class names; linked from the data module, not set in recipes.
        compile: ``torch.compile`` the network: ``false``, ``true`` or ``{mode, fullgraph,
            dynamic, backend}`` (see :mod:`trainkit.nn.compile`).
    """

    def __init__(
        self,
        arch: str = "mlp",
        arch_args: dict[str, Any] | None = None,
        activation: str | dict[str, Any] = "relu",
        norm: str | dict[str, Any] | None = None,
        sync_batchnorm: bool | None = None,
        dropout: float | None = None,
        init: dict[str, Any] | None = None,
        label_smoothing: float = 0.0,
        regularization: dict[str, Any] | None = None,
        optimizer: dict[str, Any] = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True},  # noqa: B006
        schedule: dict[str, Any] | None = None,
        lr_scaling: dict[str, Any] | None = None,
        num_classes: int = 10,
        input_shape: tuple[int, ...] = (1, 8, 8),
        freeze: list[str] | None = None,
        unfreeze: dict[int, list[str]] | None = None,
        lr_mult: dict[str, float] | None = None,
        layer_decay: float | None = None,
        ema: dict[str, Any] | None = None,
        swa: dict[str, Any] | None = None,
        prune: dict[str, Any] | None = None,
        auroc_thresholds: int | None = None,
        channels_last: bool = False,
        positive_class: int | str | None = None,
        class_names: list[str] | None = None,
        compile: bool | dict[str, Any] = False,
    ):
        super().__init__()
        # hparams go into checkpoints; the W&B config gets the whole recipe from the CLI instead
        self.save_hyperparameters(logger=False)
        check_optimizer(optimizer)  # fail on a bad spec now, not at the first step
        self.optimizer_spec = dict(optimizer)
        self.regularization = check_regularization(regularization)
        if not 0 <= label_smoothing < 1:
            raise ConfigError(f"must be in [0, 1), got {label_smoothing}", "model.label_smoothing")
        check_schedule(schedule)
        check_lr_scaling(lr_scaling)
        check_auroc_thresholds(auroc_thresholds)
        if channels_last and len(input_shape) != 3:
            shape = tuple(input_shape)
            raise ConfigError(f"is for image inputs (C, H, W); this data has inputs of shape {shape}", "model.channels_last")
        self.channels_last = channels_last
        self.compile_spec = check_compile(compile)
        self.schedule_spec, self.lr_scaling = schedule, lr_scaling
        self.net = build_net(arch, num_classes, input_shape, activation, arch_args, norm, dropout, init)
        # keyed "<stage>_": a ModuleDict key "train" would clash with nn.Module.train
        self.positive_class = check_positive_class(positive_class, num_classes, class_names)
        chunk = flush_chunk(auroc_thresholds)
        self.metrics = nn.ModuleDict({
            f"{s}_": StageMetrics(num_classes, s, chunk, auroc_thresholds, self.positive_class) for s in STAGES
        })
        setup_extras(self)
        self._step_log: tuple[int, torch.Tensor, float] | None = None
        self.step_values: dict[str, float] = {}  # the last logged per-step values, on the host

    def setup(self, stage: str) -> None:
        self.net = setup_net(self.net, self.trainer, stage, self.hparams.init, self.hparams.sync_batchnorm)
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        if getattr(self, "_compiled_id", None) != id(self.net):  # setup runs once per stage
            self.net = compile_net(self.net, self.compile_spec)
            self._compiled_id = id(self.net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)  # a no-op once it is
        return self.net(x)

    def model_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        """The one step shared by train, val and test: the loss, and the metrics fed."""
        x, y, *soft = batch  # soft targets come with mixup/cutmix (data.mix); y stays the hard label
        logits = self(x)
        smoothing = self.hparams.label_smoothing if stage == "train" else 0.0
        loss = F.cross_entropy(logits, soft[0] if soft else y, label_smoothing=smoothing)
        self.metrics[f"{stage}_"].update(logits, y, loss)
        reg = self.regularization
        if stage == "train" and (reg["l1"] or reg["l2"]):
            extra = penalty(self.net, reg["l1"], reg["l2"], reg["no_decay_bias_norm"])
            self.log("train/penalty", extra.detach(), on_step=False, on_epoch=True)
            loss = loss + extra
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.model_step(batch, "train")
        # Per-step values only on the steps Lightning's loggers write (every
        # trainer.log_every_n_steps, counted as Lightning does), and not through self.log: that
        # reads each value on the host (and the progress bar re-reads prog_bar values on every
        # later step), a device sync each on a GPU. They leave the device in on_train_batch_end.
        every = self.trainer.log_every_n_steps
        if every and (self.trainer.global_step + 1) % every == 0:
            # the lr of this step: the scheduler steps before on_train_batch_end
            self._step_log = (self.trainer.global_step, loss.detach(), float(self.trainer.optimizers[0].param_groups[0]["lr"]))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._step_log is None:  # most steps (an nn.Module attribute write costs ~2 us)
            return
        pending, self._step_log = self._step_log, None
        trainer = self.trainer
        # after the optimizer step (under gradient accumulation: the batch that stepped)
        if pending is None or trainer.global_step == pending[0] or not trainer.is_global_zero:
            return
        step, loss, lr = pending
        # everything logged leaves the device in one transfer; the lr is a Python float already
        values = {"train/loss_step": loss.float().tolist(), "train/lr": lr}
        self.step_values = {"train/loss_step": values["train/loss_step"]}  # shown by the progress bar
        for logger in trainer.loggers:
            logger.log_metrics({**values, "epoch": trainer.current_epoch}, step=step)

    def log_epoch_metrics(self, stage: str) -> None:
        """Hand the epoch's metrics to Lightning: computed and synced across ranks once, here
        (a ``self.log`` per step costs ~0.6 ms, more than a small step)."""
        values = self.metrics[f"{stage}_"].compute()
        loss = values.pop(f"{stage}/loss", None)
        if loss is not None:
            self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, prog_bar=stage != "train")
        self.log_dict(values, on_step=False, on_epoch=True, prog_bar=False)

    def on_train_epoch_start(self) -> None:
        self.metrics["train_"].reset()  # an epoch cut short (preemption, a stop) leaves none behind

    def on_validation_epoch_start(self) -> None:
        self.metrics["val_"].reset()

    def on_test_epoch_start(self) -> None:
        self.metrics["test_"].reset()

    def on_train_epoch_end(self) -> None:
        self.log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self.log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self.log_epoch_metrics("test")

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

    def configure_optimizers(self) -> Any:
        optimizer = make_optimizer(self, self.optimizer_spec, self.regularization, **optimizer_options(self))
        return configure(optimizer, self.schedule_spec, self.lr_scaling, self.trainer)

    def configure_callbacks(self) -> list[Any]:
        return extra_callbacks(self)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # every checkpoint (best, last, snapshots) is written through here: no credentials in it
        checkpoint["hyper_parameters"] = redact(checkpoint.get("hyper_parameters", {}))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # a pruned checkpoint holds weight_orig/weight_mask, a dense one weight: give the net its layout
        match_masks(self.net, checkpoint["state_dict"], "net.")
