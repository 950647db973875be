"""Training monitors under ``diag/`` (the recipe's ``diagnostics:`` group).

Every ``every_n_steps`` optimizer steps :class:`Monitors` logs, per layer (a module with
parameters of its own, named by its path in the model):

- ``diag/grad_norm/<layer>``, ``diag/weight_l2/<layer>``, ``diag/weight_l1/<layer>``;
- ``diag/update_ratio/<layer>``: ``||w_after - w_before|| / ||w_before||`` of that step
  (about 1e-3 is the classic healthy value; much larger means the lr is too high);
- per activation module: ``diag/act_mean/<layer>``, ``diag/act_std/<layer>`` and
  ``diag/dead/<layer>`` (ReLU: fraction of units never active on the batch) or
  ``diag/saturated/<layer>`` (tanh/sigmoid: fraction of outputs within 1% of the bounds);
- ``diag/lr`` (first parameter group), ``diag/throughput`` (training samples/s since the last
  log) and, on a GPU, ``diag/gpu_peak_mem_gb``.

Values go straight to every logger (W&B, CSV) at their own step, so they are not thinned by
``trainer.log_every_n_steps``; W&B also gets gradient and weight histograms. Steps between logs
cost one integer comparison; activation hooks exist only during a logged step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from typing_extensions import override

from trainkit.errors import ConfigError

DEAD_KINDS = (nn.ReLU, nn.ReLU6)  # zero output and zero gradient below 0: a unit can die
SATURATING = {nn.Tanh: (-1.0, 1.0), nn.Sigmoid: (0.0, 1.0), nn.Hardtanh: (-1.0, 1.0), nn.Hardsigmoid: (0.0, 1.0)}
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Softplus, *SATURATING)


@dataclass
class DiagnosticsConfig:
    """Training monitors and the NaN guard (the recipe's ``diagnostics:`` keys).

    Args:
        monitors: log the ``diag/`` values (see :mod:`trainkit.callbacks.diagnostics`).
        every_n_steps: log them every this many optimizer steps.
        activations: include activation statistics (forward hooks during logged steps).
        histograms: also log gradient and weight histograms to W&B.
        nan_guard: stop at the first non-finite loss or gradient with a diagnosis (exit 1).
    """

    monitors: bool = True
    every_n_steps: int = 50
    activations: bool = True
    histograms: bool = True
    nan_guard: bool = True

    def __post_init__(self) -> None:
        if self.every_n_steps < 1:
            raise ConfigError(f"must be >= 1, got {self.every_n_steps}", "diagnostics.every_n_steps")


def dead_fraction(out: Tensor) -> float:
    """Fraction of units (features, or channels of ``N,C,...`` maps) never above 0 on the batch.

    >>> dead_fraction(torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 2.0, 0.0, 3.0]]))
    0.5
    """
    per_unit = out.detach().transpose(0, 1).reshape(out.shape[1], -1) if out.ndim > 1 else out.detach()[None]
    return float((per_unit <= 0).all(dim=1).float().mean())


def saturated_fraction(out: Tensor, low: float, high: float, margin: float = 0.01) -> float:
    """Fraction of outputs within ``margin`` of the range ``(low, high)``'s ends (times its width).

    >>> saturated_fraction(torch.tensor([0.0, 0.5, 0.995, 0.2]), 0.0, 1.0)
    0.5
    """
    eps = margin * (high - low)
    out = out.detach()
    return float(((out <= low + eps) | (out >= high - eps)).float().mean())


def signal_std(out: Tensor) -> float:
    """Std over the batch (and positions) per unit, averaged over units: how much the signal
    still varies between samples (a layer can have a large std across units yet carry none).

    >>> signal_std(torch.tensor([[0.0, 5.0], [2.0, 5.0]]))
    0.7071067690849304
    """
    if out.ndim < 2 or out.shape[0] < 2:
        return 0.0
    per_unit = out.detach().float().transpose(0, 1).reshape(out.shape[1], -1)
    return float(per_unit.std(dim=1).mean())


def activation_stats(module: nn.Module, out: Tensor) -> dict[str, float]:
    """Mean, std, signal std, and the dead or saturated fraction of an activation module's output."""
    out = out.detach().float()
    stats = {"act_mean": float(out.mean()), "act_std": float(out.std()) if out.numel() > 1 else 0.0, "act_signal_std": signal_std(out)}
    if isinstance(module, DEAD_KINDS):
        stats["dead"] = dead_fraction(out)
    for kind, (low, high) in SATURATING.items():
        if isinstance(module, kind):
            stats["saturated"] = saturated_fraction(out, low, high)
    return stats


def layers(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Modules holding parameters of their own, by path, with those parameters (trainable only)."""
    out = {}
    for name, module in model.named_modules():
        params = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if params:
            out[name or "model"] = params
    return out


def activation_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, ACTIVATIONS)}


def _norm(tensors: list[Tensor], p: int = 2) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.detach().float(), p) for t in tensors]), p))


class ActivationRecorder:
    """Forward hooks that record :func:`activation_stats` per activation module while active."""

    def __init__(self, model: nn.Module):
        self.modules = activation_modules(model)
        self.stats: dict[str, dict[str, float]] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> "ActivationRecorder":
        for name, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, name: str) -> Any:
        def hook(module: nn.Module, inputs: Any, out: Tensor) -> None:
            # a module used twice in one forward keeps its last call's statistics
            self.stats[name] = activation_stats(module, out)

        return hook


class Monitors(Callback):
    """Log the ``diag/`` values every ``every_n_steps`` optimizer steps (rank zero writes).

    Args:
        every_n_steps: interval in optimizer steps.
        activations: record activation statistics on logged steps.
        histograms: gradient and weight histograms to W&B loggers.
    """

    def __init__(self, every_n_steps: int = 50, activations: bool = True, histograms: bool = True):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.activations = activations
        self.histograms = histograms
        self.last: dict[str, float] = {}  # the latest logged values (tests and metrics.json read them)
        self._recorder: ActivationRecorder | None = None
        self._before: dict[str, list[Tensor]] | None = None
        self._pending: dict[str, float] = {}
        self._samples = 0
        self._clock = 0.0

    def _due(self, trainer: pl.Trainer) -> bool:
        return trainer.global_step % self.every_n_steps == 0

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._samples, self._clock = 0, time.perf_counter()

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        if self.activations and self._due(trainer) and trainer.is_global_zero:
            self._recorder = ActivationRecorder(pl_module).__enter__()

    @override
    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if not self._due(trainer) or not trainer.is_global_zero:
            return
        values: dict[str, float] = {}
        self._before = {}
        for name, params in layers(pl_module).items():
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                values[f"diag/grad_norm/{name}"] = _norm(grads)
            values[f"diag/weight_l2/{name}"] = _norm(list(params))
            values[f"diag/weight_l1/{name}"] = _norm(list(params), 1)
            self._before[name] = [p.detach().clone() for p in params]
        values["diag/lr"] = float(optimizer.param_groups[0]["lr"])
        self._pending = values
        if self.histograms:
            self._histograms(trainer, pl_module)

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        self._samples += len(x) * trainer.world_size
        if self._recorder is not None:
            self._recorder.__exit__()
            for layer, stats in self._recorder.stats.items():
                self._pending.update({f"diag/{k}/{layer}": v for k, v in stats.items()})
            self._recorder = None
        if self._before is None:
            return
        params = layers(pl_module)
        for name, before in self._before.items():
            delta = [p.detach() - b for p, b in zip(params[name], before)]
            w = _norm(before)
            self._pending[f"diag/update_ratio/{name}"] = _norm(delta) / w if w > 0 else float("inf")
        self._before = None
        now = time.perf_counter()
        self._pending["diag/throughput"] = self._samples / max(now - self._clock, 1e-9)
        self._samples, self._clock = 0, now
        if pl_module.device.type == "cuda":
            self._pending["diag/gpu_peak_mem_gb"] = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
        # the step counter has advanced past the step these values describe
        step = trainer.global_step - 1
        for logger in trainer.loggers:
            logger.log_metrics(self._pending, step=step)
        self.last = dict(self._pending)
        self._pending = {}

    def _histograms(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from lightning.pytorch.loggers import WandbLogger

        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers:
            return
        import wandb

        hists = {}
        for name, params in layers(pl_module).items():
            w = params[0].detach().float().flatten().cpu()
            hists[f"diag/hist/weight/{name}"] = wandb.Histogram(w.numpy())
            if params[0].grad is not None:
                hists[f"diag/hist/grad/{name}"] = wandb.Histogram(params[0].grad.detach().float().flatten().cpu().numpy())
        for lg in loggers:
            lg.experiment.log({**hists, "trainer/global_step": trainer.global_step})


def diagnostics_callbacks(cfg: DiagnosticsConfig) -> list[Callback]:
    """The callbacks the recipe's ``diagnostics:`` group asks for."""
    from trainkit.callbacks.nan_guard import NaNGuard

    out: list[Callback] = [NaNGuard()] if cfg.nan_guard else []
    if cfg.monitors:
        out.append(Monitors(cfg.every_n_steps, cfg.activations, cfg.histograms))
    return out
