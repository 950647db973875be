"""Weight averaging: EMA of the weights and SWA, evaluated and checkpointed with averaged weights.

``model.ema: {decay: 0.999, warmup: true}``: after every optimizer step ``t`` (1, 2, ...)
``e_t = d_t e_{t-1} + (1 - d_t) w_t`` with ``e_0`` the weights at the start of the fit and
``d_t = min(decay, (1 + t) / (10 + t))`` with warmup (timm/TF ModelEmaV2), else ``decay``.
Buffers (batch-norm statistics) are averaged the same way.

``model.swa: {start_epoch: 5}``: the equal-weight mean of the weights at the end of every epoch
from ``start_epoch`` on (Izmailov et al. 2018); the batch-norm statistics of the averaged
weights are recomputed with a pass over the training data (``torch.optim.swa_utils.update_bn``)
before they are evaluated or saved. Pair it with a constant or cyclic lr (``model.schedule``).

The averaged copy is a ``torch.optim.swa_utils.AveragedModel`` (its state_dict layout), kept
on the training device (made in ``setup``, moved in ``on_fit_start`` once Lightning has moved
the model) and updated with foreach ops and a Python step counter: an update reads nothing on
the host (``AveragedModel.update_parameters`` reads its ``n_averaged`` tensor twice per call).

While averaging, validation runs on the averaged weights, and every checkpoint stores them as
the model's weights; the raw training weights travel in the checkpoint too, so a resume
continues training from them. ``best.ckpt`` is ranked among the averaged epochs only: at the
first validation of the averaged weights (SWA's ``start_epoch``; EMA's first epoch) the
ranking of earlier, raw-weight epochs is dropped, so ``fit``'s report, ``best.ckpt`` and
``trainkit test`` are the averaged model (a fit that ends before SWA starts has none, and
says so).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, update_bn
from typing_extensions import override

from trainkit.arguments import check_types
from trainkit.errors import ConfigError

RAW_KEY = "trainkit_raw_weights"


def ema_decay(decay: float, warmup: bool, step: int) -> float:
    """The decay of update ``step`` (1-based).

    >>> ema_decay(0.999, True, 1), ema_decay(0.999, False, 1), ema_decay(0.5, True, 100)
    (0.18181818181818182, 0.999, 0.5)
    """
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


def check_averaging(ema: dict[str, Any] | None, swa: dict[str, Any] | None) -> None:
    """Validate ``model.ema`` and ``model.swa``.

    Raises:
        ConfigError: unknown keys, a decay outside [0, 1), a negative start epoch, or both set.
    """
    if ema is not None:
        bad = set(ema) - {"decay", "warmup"}
        if bad:
            raise ConfigError(f"unknown key {sorted(bad)[0]!r} (valid: decay, warmup)", "model.ema")
        check_types(WeightAveraging, ema, "model.ema")
        if not 0 <= float(ema.get("decay", 0.999)) < 1:
            raise ConfigError(f"must be in [0, 1), got {ema.get('decay')}", "model.ema.decay")
    if swa is not None:
        bad = set(swa) - {"start_epoch"}
        if bad:
            raise ConfigError(f"unknown key {sorted(bad)[0]!r} (valid: start_epoch)", "model.swa")
        check_types(WeightAveraging, swa, "model.swa")
        if int(swa.get("start_epoch", 0)) < 0:
            raise ConfigError(f"must be >= 0, got {swa.get('start_epoch')}", "model.swa.start_epoch")
    if ema is not None and swa is not None:
        raise ConfigError("set model.ema or model.swa, not both", "model.swa")


class WeightAveraging(Callback):
    """EMA (``kind="ema"``) or SWA (``kind="swa"``) of ``pl_module.net``; see the module docstring."""

    def __init__(self, kind: str, decay: float = 0.999, warmup: bool = True, start_epoch: int = 0):
        if kind not in ("ema", "swa"):
            raise ValueError(f"kind must be ema or swa, got {kind!r}")
        self.kind, self.decay, self.warmup, self.start_epoch = kind, float(decay), bool(warmup), int(start_epoch)
        self.averaged: AveragedModel | None = None
        self.n = 0  # updates so far, on the host (the copy's n_averaged buffer follows it)
        self._raw: dict[str, Tensor] | None = None  # training weights while averaged ones are swapped in
        self._bn_fresh = False
        self._step = -1
        self._pairs: tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]] | None = None
        self._ranked = False  # best.ckpt ranked among averaged epochs since this fit started

    @property
    def active(self) -> bool:
        return self.averaged is not None and self.n > 0

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.averaged is None:
            # before the model is on its device (Lightning moves it after setup): on_fit_start moves
            # the copy; made here so that a resumed fit can load its state before that
            self.averaged = AveragedModel(pl_module.net, use_buffers=self.kind == "ema")

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.averaged is not None:
            self.averaged.to(pl_module.device)
            self._pairs = None
        if self.kind == "swa" and trainer.max_epochs is not None and 0 <= trainer.max_epochs <= self.start_epoch:
            rank_zero_warn(f"model.swa.start_epoch is {self.start_epoch} but the fit has {trainer.max_epochs} epochs: "
                           "nothing is averaged, best.ckpt and the report are the raw weights")

    def _tensors(self, net: nn.Module) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """(averaged floats, current floats, averaged others, current others), cached per fit."""
        if self._pairs is None:
            assert self.averaged is not None
            mine, theirs = list(self.averaged.module.parameters()), list(net.parameters())
            if self.kind == "ema":  # EMA averages the buffers (batch-norm statistics) too
                mine, theirs = mine + list(self.averaged.module.buffers()), theirs + list(net.buffers())
            floats = [(a, b) for a, b in zip(mine, theirs) if a.is_floating_point()]
            others = [(a, b) for a, b in zip(mine, theirs) if not a.is_floating_point()]
            self._pairs = ([a.detach() for a, _ in floats], [b.detach() for _, b in floats],
                           [a.detach() for a, _ in others], [b.detach() for _, b in others])
        return self._pairs

    def update(self, net: nn.Module) -> None:
        """One averaging step with the current weights of ``net`` (foreach ops, no host read)."""
        assert self.averaged is not None, "setup(stage='fit') creates the average"
        avg_f, cur_f, avg_o, cur_o = self._tensors(net)
        with torch.no_grad():
            if self.n == 0:
                torch._foreach_copy_(avg_f, cur_f)
            elif self.kind == "ema":
                d = ema_decay(self.decay, self.warmup, self.n)
                torch._foreach_lerp_(avg_f, cur_f, 1.0 - d)  # e = d e + (1 - d) w
            else:
                torch._foreach_lerp_(avg_f, cur_f, 1.0 / (self.n + 1))  # the running mean
            if avg_o:
                torch._foreach_copy_(avg_o, cur_o)  # counters (num_batches_tracked)
            if self.kind == "swa":
                # SWA's buffers are recomputed by update_bn; until then they follow the model's
                for b_avg, b in zip(self.averaged.module.buffers(), net.buffers()):
                    b_avg.detach().copy_(b.detach())
            self.n += 1
            self.averaged.n_averaged.fill_(self.n)  # a device write from a Python int: no read
        self._bn_fresh = False

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pairs = None  # pruning may have re-parametrized the net since

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.kind == "ema" and not self.active:
            self.update(pl_module.net)  # e_0: the weights the fit starts from

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        # one update per optimizer step (several batches make one under gradient accumulation)
        if self.kind == "ema" and trainer.global_step != self._step:
            self._step = trainer.global_step
            self.update(pl_module.net)
        # SWA: at the epoch's last batch, so before validation and the epoch-end last.ckpt
        last_batch = args[-1] + 1 == trainer.num_training_batches
        if self.kind == "swa" and last_batch and trainer.current_epoch >= self.start_epoch:
            self.update(pl_module.net)

    def averaged_state(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Tensor]:
        """The averaged weights as a state_dict of ``net`` (SWA: batch-norm statistics recomputed)."""
        assert self.averaged is not None
        if self.kind == "swa" and not self._bn_fresh:
            # a fresh loader: iterating the fit's own would move its resumable position
            dm = trainer.datamodule
            loader = dm.train_dataloader() if dm is not None else trainer.train_dataloader
            if loader is not None:
                if dm is not None:  # file sources' uint8 batches standardized, as in training
                    loader = (dm.prepare_inputs(batch[0]) for batch in loader)
                update_bn(loader, self.averaged.module, device=pl_module.device)
            self._bn_fresh = True
        return self.averaged.module.state_dict()

    def _fitting(self, trainer: pl.Trainer) -> bool:
        return trainer.state.fn == "fit" and not trainer.sanity_checking and self.active

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._fitting(trainer):
            self._raw = {k: v.detach().clone() for k, v in pl_module.net.state_dict().items()}
            pl_module.net.load_state_dict(self.averaged_state(trainer, pl_module))

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._raw is not None:
            pl_module.net.load_state_dict(self._raw)
            self._raw = None
            if not self._ranked:
                self._rank_averaged_only(trainer)

    def _rank_averaged_only(self, trainer: pl.Trainer) -> None:
        """Drop the ranking of the raw-weight epochs before this first averaged validation.

        Runs before the ModelCheckpoints rank it (Lightning calls Checkpoint callbacks last):
        their best score becomes the worst possible, so this epoch replaces best.ckpt in place
        (through ModelCheckpoint's public ranking attributes; it has no "restart" call).
        """
        self._ranked = True
        for ckpt in trainer.checkpoint_callbacks:
            if isinstance(ckpt, ModelCheckpoint) and ckpt.monitor and ckpt.best_k_models:
                worst = torch.tensor(float("inf") if ckpt.mode == "min" else float("-inf"))
                ckpt.best_k_models = {path: worst for path in ckpt.best_k_models}
                ckpt.kth_value = ckpt.best_model_score = worst

    @override
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn != "fit" or not self.active:
            return
        raw = self._raw if self._raw is not None else pl_module.net.state_dict()
        state = checkpoint["state_dict"]
        checkpoint[RAW_KEY] = {k: v.detach().clone() for k, v in raw.items()}
        for k, v in self.averaged_state(trainer, pl_module).items():
            state[f"net.{k}"] = v.detach().clone()

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        # a resumed fit trains on from the raw weights; evaluation stages keep the averaged ones
        if trainer.state.fn == "fit" and RAW_KEY in checkpoint:
            pl_module.net.load_state_dict(checkpoint[RAW_KEY])

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"averaged": self.averaged.state_dict(), "ranked": self._ranked} if self.averaged is not None else {}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.averaged is not None and "averaged" in state_dict:
            self.averaged.load_state_dict(state_dict["averaged"])
            self.n = int(self.averaged.n_averaged)  # once, at restore
            self._bn_fresh = False
            # a resumed fit whose checkpoint already ranked averaged epochs keeps that ranking
            self._ranked = self.n > 0 and state_dict.get("ranked", True)

