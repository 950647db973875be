"""NaN guard: a non-finite loss or gradient never reaches the weights, and the run stops.

What it promises, without reading a value on the host in an ordinary step:

- **No update from a bad step.** Every step, on the device: the gradient norms are taken
  before the optimizer step (a non-finite loss makes its gradients non-finite; under DDP they
  are the all-reduced ones, so every rank decides alike), and the step's update is skipped when
  one is non-finite. torch's fused SGD/Adam/AdamW/Adagrad kernels take the flag as
  ``found_inf`` (the mechanism of ``GradScaler``) and skip on the device; the guard switches
  those optimizers to their fused kernels (they already are on CUDA). Any other optimizer gets
  a device-side restore: parameters and optimizer state are copied before the step and put
  back where the flag is set (state that a skipped step created is zeroed; Python counters
  some optimizers keep in their groups still advance). Under ``16-mixed`` the ``GradScaler``
  skips inf/NaN gradients itself (overflow is routine there), and the guard watches the loss
  only. The step's loss is kept too: a non-finite loss whose gradients are all finite (it
  takes infinite logits from a finite network) updates the weights finitely and stops the run.
- **A stop at the next host check** (every ``check_every_n_steps`` optimizer steps, default
  ``trainer.log_every_n_steps``; also at each validation, epoch end and before every
  checkpoint): one transfer of the steps' flags; the error names the first bad step, its lr and
  the layer: the first parameter with a non-finite gradient, or, when the loss itself was
  non-finite, the first layer whose output is non-finite on the current batch.
- **No checkpoint with a bad step in it.** Every checkpoint (``last.ckpt``, ``best.ckpt``,
  snapshots, a preemption's) is preceded by a check, so none is written once a bad step has
  happened; weights stay finite anyway, but batch-norm statistics of the bad batch's forward
  would not.

The CLI prints the error and exits 1 (a failed run, not bad input). For the operation that
produced the NaN, rerun with ``trainer.detect_anomaly: true`` (slow, names the backward op).
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from typing_extensions import override

from trainkit.errors import TrainingFailed

CAUSES = (
    "likely causes: the lr is too high (try `trainkit lr-find`, a warmup, or gradient clipping "
    "with trainer.gradient_clip_val), a log of zero or a division by zero in the loss or a custom "
    "layer, or non-finite values in the data; rerun with --trainer.detect_anomaly=true to name the op"
)
# torch optimizers whose fused kernels take ``found_inf``; Adagrad's fused kernel is CPU-only
FOUND_INF = {torch.optim.SGD: None, torch.optim.Adam: None, torch.optim.AdamW: None, torch.optim.Adagrad: "cpu"}


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


def first_nonfinite_buffer(model: nn.Module) -> str | None:
    """The first floating-point buffer (batch-norm statistics) holding a non-finite value."""
    for name, b in model.named_buffers():
        if b.is_floating_point() and not torch.isfinite(b).all():
            return name
    return None


def skip_mode(optimizer: torch.optim.Optimizer, scaler: Any) -> str:
    """How a bad step is kept from the weights: ``scaler`` (the GradScaler skips it),
    ``found_inf`` (a fused torch kernel skips it) or ``restore`` (copy and put back)."""
    if scaler is not None:
        return "scaler"
    devices = FOUND_INF.get(type(optimizer), "none")
    if devices == "none":
        return "restore"
    for group in optimizer.param_groups:
        if group.get("differentiable") or group.get("foreach") or group.get("capturable", False) and not group.get("fused"):
            return "restore"
        # fused SGD leaves a first step's momentum buffer uninitialized when it skips; the guard
        # zeroes it beforehand, which equals torch's first step only without dampening
        if type(optimizer) is torch.optim.SGD and group["momentum"] and group["dampening"]:
            return "restore"
        for p in group["params"]:
            if not p.is_floating_point() or (devices is not None and p.device.type != devices) or p.is_sparse:
                return "restore"
            if p.device.type not in ("cpu", "cuda", "xpu", "mps"):
                return "restore"
    return "found_inf"


class NaNGuard(Callback):
    """Skip non-finite steps on the device; raise :class:`~trainkit.errors.TrainingFailed` at
    the next host check (see the module docstring).

    Args:
        check_every_n_steps: optimizer steps between host checks (``None``:
            ``trainer.log_every_n_steps``).
    """

    def __init__(self, check_every_n_steps: int | None = None) -> None:
        if check_every_n_steps is not None and check_every_n_steps < 1:
            raise ValueError(f"check_every_n_steps must be >= 1, got {check_every_n_steps}")
        self.check_every_n_steps = check_every_n_steps
        self.every = check_every_n_steps or 50
        self.modes: dict[int, str] = {}  # per optimizer (id): see skip_mode
        self._rows: Tensor | None = None  # per step since the last check: grad norms..., loss
        self._views: list[tuple[Tensor, Tensor]] = []
        self._first_step = 0  # the optimizer step of row 0
        self._used = 0  # rows filled
        self._lrs: list[float] = []
        self._params: list[Tensor] = []
        self._batch: Any = None
        self._saved: tuple[list[Tensor], list[Tensor], set[int], Tensor] | None = None
        self._last_saved_step: int | None = None
        self._primed: set[int] = set()

    # -- set-up --------------------------------------------------------------------------------
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.every = self.check_every_n_steps or max(int(trainer.log_every_n_steps or 50), 1)
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        for optimizer in trainer.optimizers:
            mode = self.modes[id(optimizer)] = skip_mode(optimizer, scaler)
            if mode == "found_inf":
                for group in optimizer.param_groups:
                    group["fused"] = True
        self.mode = next(iter(self.modes.values()), "restore")
        self._params = [p for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]]
        self._reset(trainer.global_step)

    def _reset(self, step: int) -> None:
        self._first_step, self._used, self._lrs = step, 0, []
        if self._rows is not None:
            self._rows.zero_()

    # -- per step, on the device ---------------------------------------------------------------
    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        grads = [p.grad for p in self._params if p.grad is not None]
        if not grads:
            return
        if self._used > self.every:  # more steps than rows since the last check (checks skipped)
            self.check(trainer, pl_module)
        mode = self.modes.get(id(optimizer), "restore")
        rows = self._rows
        if rows is None or rows.shape[1] != len(grads) + 1 or rows.device != grads[0].device:
            self._rows = rows = torch.zeros(self.every + 2, len(grads) + 1, device=grads[0].device)
            # views made once: indexing a tensor costs microseconds a step
            self._views = [(row[:-1], row[-1]) for row in rows]
        # this step's row: the gradient norms, then (in on_train_batch_end) the loss; written in
        # place, a handful of small ops and no host read
        norms = torch.stack(torch._foreach_norm(grads), out=self._views[self._used][0])
        if mode == "found_inf":
            self._prime(optimizer)
            # the gradients are all-reduced under DDP: every rank skips alike
            optimizer.found_inf = torch.isfinite(norms.sum()).logical_not_().float()
        elif mode == "restore":
            self._save(optimizer, [p for p in self._params if p.grad is not None], torch.isfinite(norms.sum()).logical_not_())
        self._used += 1
        self._lrs.append(float(optimizer.param_groups[0]["lr"]))

    def _prime(self, optimizer: torch.optim.Optimizer) -> None:
        # fused SGD allocates a first step's momentum buffer with empty_like and, when that step
        # is skipped, leaves it uninitialized; a zero buffer gives the same first step (no dampening)
        if type(optimizer) is not torch.optim.SGD or id(optimizer) in self._primed:
            return
        for group in optimizer.param_groups:
            if group["momentum"]:
                for p in group["params"]:
                    if optimizer.state[p].get("momentum_buffer") is None:
                        optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p)
        self._primed.add(id(optimizer))

    def _save(self, optimizer: torch.optim.Optimizer, params: list[Tensor], bad: Tensor) -> None:
        tensors = [*params, *self._state_tensors(optimizer)]
        self._saved = (tensors, [t.detach().clone() for t in tensors], {id(t) for t in tensors}, bad)

    @staticmethod
    def _state_tensors(optimizer: Any) -> list[Tensor]:
        inner = getattr(optimizer, "optimizer", None)  # wrappers (lookahead) keep their base's state too
        states = [optimizer.state, *([inner.state] if isinstance(inner, torch.optim.Optimizer) else [])]
        return [v for state in states for s in state.values() for v in s.values() if isinstance(v, Tensor)]

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._saved is not None:
            tensors, copies, known, bad = self._saved
            self._saved = None
            with torch.no_grad():
                for t, c in zip(tensors, copies):
                    t.copy_(torch.where(bad, c, t))
                for t in self._state_tensors(trainer.optimizers[0]):
                    if id(t) not in known:  # created by this step
                        t.masked_fill_(bad, 0)
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if self._used and isinstance(loss, Tensor):
            self._views[self._used - 1][1].copy_(loss.detach())  # the step's loss, checked at the next check
        self._batch = batch  # a reference: the failure message runs it through the model
        if self._used and trainer.global_step % self.every == 0:
            self.check(trainer, pl_module)

    # -- host checks ---------------------------------------------------------------------------
    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.check(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check(trainer, pl_module)

    @override
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == "fit":
            self.check(trainer, pl_module)  # raises before the file is written
            self._last_saved_step = trainer.global_step

    def check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Read the flags of the steps since the last check (one transfer); raise on a bad one."""
        if not self._used or self._rows is None:
            return
        rows = self._rows[: self._used]
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            # identical on every rank already, except loss flags under a GradScaler: agree anyway
            rows = rows.clone()
            dist.all_reduce(rows, op=dist.ReduceOp.MAX)
        values = rows.tolist()
        first, lrs = self._first_step, self._lrs
        self._reset(trainer.global_step)
        for i, row in enumerate(values):
            loss_bad = not math.isfinite(row[-1])
            bad_grad = next((j for j, v in enumerate(row[:-1]) if not math.isfinite(v)), None)
            if loss_bad or (bad_grad is not None and self.mode != "scaler"):
                self._fail(trainer, pl_module, first + i, lrs[i] if i < len(lrs) else float("nan"), loss_bad, bad_grad)

    def _fail(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int, lr: float,
              loss_bad: bool, bad_grad: int | None) -> None:
        names = {id(p): n for n, p in pl_module.named_parameters()}
        with_grads = [p for p in self._params if p.grad is not None] or self._params
        weights = first_nonfinite_param(pl_module, grads=False)
        buffers = first_nonfinite_buffer(pl_module)
        if loss_bad:
            what = "the loss was non-finite"
            x = self._batch[0] if isinstance(self._batch, (list, tuple)) else self._batch
            out = first_nonfinite_output(pl_module, x) if isinstance(x, Tensor) else None
            now = trainer.global_step
            layer = (f"first layer with a non-finite output on the batch of step {now}: {out}" if out else
                     f"on the batch of step {now} every layer's output is finite (the bad values came with "
                     f"step {step}'s batch, or the loss itself overflowed)")
        else:
            what = "a gradient was non-finite (the loss was finite)"
            param = with_grads[bad_grad] if bad_grad is not None and bad_grad < len(with_grads) else None
            layer = f"first layer with a non-finite gradient: {names.get(id(param), 'a parameter outside the model')}"
        if weights:
            layer += f"; non-finite weights now in {weights}"
        if buffers:
            layer += f"; non-finite batch-norm statistics (from the bad batch's forward) in {buffers}"
        if self.mode == "scaler":
            kept = "the GradScaler skipped the updates with non-finite gradients"
        else:
            how = "found inf" if self.mode == "found_inf" else "restored"
            kept = f"its update and every later one with a non-finite value were skipped on the device ({how}), so the weights stayed finite"
        saved = (f"the last one this run wrote is from step {self._last_saved_step}" if self._last_saved_step is not None
                 else "this run wrote no checkpoint")
        raise TrainingFailed(
            f"training diverged at step {step} (epoch {trainer.current_epoch}): {what}; lr={lr:.4g}; {layer}. {CAUSES}. "
            f"The run stopped at step {trainer.global_step} (checked every {self.every} steps and before every checkpoint): {kept}; "
            f"no checkpoint was written after the bad step: {saved}."
        )
