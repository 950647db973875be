"""NaN guard: stop at the first non-finite loss or gradient, before it reaches the weights.

The loss is checked before backward and the gradients before the optimizer step, so the
update that would have poisoned the weights never runs and no checkpoint with NaN weights is
written: ``last.ckpt`` keeps the last good state. The error names the step, the lr, the first
layer with non-finite values and the likely causes; the CLI prints it and exits 1 (a failed
run, not bad input). For the operation that produced the NaN, rerun with
``trainer.detect_anomaly: true`` (PyTorch's anomaly mode: slow, names the backward op).
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from typing_extensions import override

from trainkit.errors import TrainingFailed

CAUSES = (
    "likely causes: the lr is too high (try `trainkit lr-find`, a warmup, or gradient clipping "
    "with trainer.gradient_clip_val), a log of zero or a division by zero in the loss or a custom "
    "layer, or non-finite values in the data; rerun with --trainer.detect_anomaly=true to name the op"
)


def first_nonfinite_output(model: nn.Module, x: Tensor) -> str | None:
    """The first module (in forward order) whose output holds a non-finite value on ``x``."""
    found: list[str] = []
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(m: nn.Module, inputs: Any, out: Any, name: str = name) -> None:
            if not found and isinstance(out, Tensor) and not torch.isfinite(out).all():
                found.append(f"{name} ({type(m).__name__})")

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None


def first_nonfinite_param(model: nn.Module, grads: bool) -> str | None:
    """The first parameter (in definition order) whose value or gradient is non-finite."""
    for name, p in model.named_parameters():
        t = p.grad if grads else p
        if t is not None and not torch.isfinite(t).all():
            return name
    return None


class NaNGuard(Callback):
    """Raise :class:`~trainkit.errors.TrainingFailed` on a non-finite loss or gradient."""

    def __init__(self) -> None:
        self._batch: Any = None

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._batch = batch  # a reference only: used to locate the layer if the loss is bad

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        if bool(torch.isfinite(loss.detach()).all()):
            return
        where = first_nonfinite_param(pl_module, grads=False)
        if where is not None:
            layer = f"first layer with non-finite weights: {where}"
        else:
            x = self._batch[0] if isinstance(self._batch, (list, tuple)) else self._batch
            out = first_nonfinite_output(pl_module, x) if isinstance(x, Tensor) else None
            layer = f"first layer with a non-finite output: {out}" if out else "every layer's output is finite (the loss itself overflowed)"
        self._fail(trainer, f"the loss is {float(loss.detach())}", layer)

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        # the optimizer's parameters: walking pl_module.parameters() each step costs more (every
        # submodule, the metric modules included, is visited and hashed)
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:
            return
        # one reduction and one host sync per step
        if bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()):
            return
        self._fail(trainer, "a gradient is non-finite", f"first layer with a non-finite gradient: {first_nonfinite_param(pl_module, grads=True)}")

    def _fail(self, trainer: pl.Trainer, what: str, layer: str) -> None:
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        raise TrainingFailed(
            f"training diverged at step {trainer.global_step} (epoch {trainer.current_epoch}): {what}; "
            f"lr={lr:.4g}; {layer}. {CAUSES}. The weights were not updated with it: "
            "checkpoints written before this step are intact."
        )
