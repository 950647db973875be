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
``trainer.log_every_n_steps``; W&B also gets gradient and weight histograms (binned on the
device; near-constant values get a narrow range around their value instead of numpy's
"Too many bins for data range"). Everything a monitor step logs is computed on the device and
leaves it in one transfer at the end of the step; steps between logs cost one integer
comparison, and activation hooks exist only during a logged step.
"""

from __future__ import annotations

import math
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
        nan_guard: skip non-finite steps on the device and stop with a diagnosis (exit 1).
        nan_check_every_n_steps: optimizer steps between the NaN guard's host checks (the run
            stops at most this many steps after the first bad one); ``null``: the log interval
            (``trainer.log_every_n_steps``).
    """

    monitors: bool = True
    every_n_steps: int = 50
    activations: bool = True
    histograms: bool = True
    nan_guard: bool = True
    nan_check_every_n_steps: int | None = None

    def __post_init__(self) -> None:
        if self.every_n_steps < 1:
            raise ConfigError(f"must be >= 1, got {self.every_n_steps}", "diagnostics.every_n_steps")
        n = self.nan_check_every_n_steps
        if n is not None and (isinstance(n, bool) or n < 1):
            raise ConfigError(f"must be null (the log interval) or an integer >= 1, got {n!r}", "diagnostics.nan_check_every_n_steps")


def dead_units(out: Tensor) -> Tensor:
    """:func:`dead_fraction` as a tensor on the output's device (no host read)."""
    per_unit = out.detach().transpose(0, 1).reshape(out.shape[1], -1) if out.ndim > 1 else out.detach()[None]
    return (per_unit <= 0).all(dim=1).float().mean()


def dead_fraction(out: Tensor) -> float:
    """Fraction of units (features, or channels of ``N,C,...`` maps) never above 0 on the batch.

    >>> dead_fraction(torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 2.0, 0.0, 3.0]]))
    0.5
    """
    return float(dead_units(out))


def saturated_units(out: Tensor, low: float, high: float, margin: float = 0.01) -> Tensor:
    """:func:`saturated_fraction` as a tensor on the output's device."""
    eps = margin * (high - low)
    out = out.detach()
    return ((out <= low + eps) | (out >= high - eps)).float().mean()


def saturated_fraction(out: Tensor, low: float, high: float, margin: float = 0.01) -> float:
    """Fraction of outputs within ``margin`` of the range ``(low, high)``'s ends (times its width).

    >>> saturated_fraction(torch.tensor([0.0, 0.5, 0.995, 0.2]), 0.0, 1.0)
    0.5
    """
    return float(saturated_units(out, low, high, margin))


def signal_std_tensor(out: Tensor) -> Tensor:
    """:func:`signal_std` as a tensor on the output's device."""
    if out.ndim < 2 or out.shape[0] < 2:
        return out.new_zeros((), dtype=torch.float32)
    per_unit = out.detach().float().transpose(0, 1).reshape(out.shape[1], -1)
    return per_unit.std(dim=1).mean()


def signal_std(out: Tensor) -> float:
    """Std over the batch (and positions) per unit, averaged over units: how much the signal
    still varies between samples (a layer can have a large std across units yet carry none).

    >>> signal_std(torch.tensor([[0.0, 5.0], [2.0, 5.0]]))
    0.7071067690849304
    """
    return float(signal_std_tensor(out))


def activation_tensors(module: nn.Module, out: Tensor) -> dict[str, Tensor]:
    """Mean, std, signal std, and the dead or saturated fraction of an activation module's
    output, as tensors on its device."""
    out = out.detach().float()
    stats = {"act_mean": out.mean(), "act_std": out.std() if out.numel() > 1 else out.new_zeros(()),
             "act_signal_std": signal_std_tensor(out)}
    if isinstance(module, DEAD_KINDS):
        stats["dead"] = dead_units(out)
    for kind, (low, high) in SATURATING.items():
        if isinstance(module, kind):
            stats["saturated"] = saturated_units(out, low, high)
    return stats


def activation_stats(module: nn.Module, out: Tensor) -> dict[str, float]:
    """:func:`activation_tensors` read on the host (one transfer)."""
    stats = activation_tensors(module, out)
    return dict(zip(stats, torch.stack(list(stats.values())).tolist()))


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


def _norm(tensors: list[Tensor], p: int = 2) -> Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.detach().float(), p) for t in tensors]), p)


HIST_BINS = 64


def histogram_tensor(t: Tensor, bins: int = HIST_BINS) -> Tensor:
    """``[low, high, count_1 ... count_bins]`` of ``t``'s values, computed on its device.

    The range is widened around near-constant values (to a half-width of at least 1e-6 of the
    value, or 1e-30 at zero), so a histogram always has increasing edges: numpy's own
    (``wandb.Histogram(values)``) raises "Too many bins for data range" there.

    >>> h = histogram_tensor(torch.full((5,), 0.25))
    >>> float(h[0]) < 0.25 < float(h[1]), int(h[2:].sum()), int(h[2:].argmax())
    (True, 5, 32)
    """
    t = t.detach().float().flatten()
    lo, hi = torch.aminmax(t)
    centre = (lo + hi) / 2
    half = torch.maximum((hi - lo) / 2, centre.abs() * 1e-6).clamp_min(1e-30)
    lo, hi = centre - half, centre + half
    counts = torch.histc(((t - lo) / (hi - lo)).clamp(0, 1), bins=bins, min=0, max=1)
    return torch.cat([lo[None], hi[None], counts])


def wandb_histogram(values: list[float]) -> Any:
    """A ``wandb.Histogram`` from a :func:`histogram_tensor` read on the host; ``None`` when the
    values were not finite (the NaN guard reports those)."""
    import numpy as np
    import wandb

    lo, hi, counts = values[0], values[1], values[2:]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    return wandb.Histogram(np_histogram=(np.asarray(counts), np.linspace(lo, hi, len(counts) + 1)))


class ActivationRecorder:
    """Forward hooks that record :func:`activation_tensors` per activation module while active.

    ``tensors`` holds the device values; ``stats`` reads them on the host (one transfer).
    """

    def __init__(self, model: nn.Module):
        self.modules = activation_modules(model)
        self.tensors: dict[str, dict[str, Tensor]] = {}
        self._handles: list[Any] = []

    @property
    def stats(self) -> dict[str, dict[str, float]]:
        flat = [(layer, k, v) for layer, d in self.tensors.items() for k, v in d.items()]
        if not flat:
            return {}
        values = torch.stack([v.float() for _, _, v in flat]).tolist()
        out: dict[str, dict[str, float]] = {}
        for (layer, k, _), value in zip(flat, values):
            out.setdefault(layer, {})[k] = value
        return out

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
            self.tensors[name] = activation_tensors(module, out)

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
        self._before: dict[str, tuple[list[Tensor], Tensor]] | None = None
        self._pending: dict[str, Tensor] = {}  # device values of the monitor step in progress
        self._host: dict[str, float] = {}  # values already on the host (lr)
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
        values: dict[str, Tensor] = {}
        self._before = {}
        with torch.no_grad():
            for name, params in layers(pl_module).items():
                grads = [p.grad for p in params if p.grad is not None]
                if grads:
                    values[f"diag/grad_norm/{name}"] = _norm(grads)
                values[f"diag/weight_l2/{name}"] = w = _norm(list(params))
                values[f"diag/weight_l1/{name}"] = _norm(list(params), 1)
                self._before[name] = ([p.detach().clone() for p in params], w)
                if self.histograms and self._wandb(trainer):
                    values[f"diag/hist/weight/{name}"] = histogram_tensor(params[0])
                    if params[0].grad is not None:
                        values[f"diag/hist/grad/{name}"] = histogram_tensor(params[0].grad)
        self._host = {"diag/lr": float(optimizer.param_groups[0]["lr"])}
        self._pending = values

    @staticmethod
    def _wandb(trainer: pl.Trainer) -> list[Any]:
        from lightning.pytorch.loggers import WandbLogger

        return [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        self._samples += len(x) * trainer.world_size
        if self._recorder is not None:
            self._recorder.__exit__()
            for layer, stats in self._recorder.tensors.items():
                self._pending.update({f"diag/{k}/{layer}": v for k, v in stats.items()})
            self._recorder = None
        if self._before is None:
            self._pending = {}
            return
        params = layers(pl_module)
        with torch.no_grad():
            for name, (before, w) in self._before.items():
                delta = _norm([p.detach() - b for p, b in zip(params[name], before)])
                self._pending[f"diag/update_ratio/{name}"] = torch.where(w > 0, delta / w, math.inf)
        self._before = None
        values = self._read(self._pending)
        now = time.perf_counter()
        values["diag/throughput"] = self._samples / max(now - self._clock, 1e-9)
        self._samples, self._clock = 0, now
        if pl_module.device.type == "cuda":
            values["diag/gpu_peak_mem_gb"] = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
        values.update(self._host)
        hists = {k: v for k, v in values.items() if k.startswith("diag/hist/")}
        scalars = {k: v for k, v in values.items() if k not in hists}
        # the step counter has advanced past the step these values describe
        step = trainer.global_step - 1
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)
        if hists:
            records = {k: h for k, v in hists.items() if (h := wandb_histogram(v)) is not None}
            for lg in self._wandb(trainer):
                lg.experiment.log({**records, "trainer/global_step": step})
        self.last = scalars
        self._pending = {}

    @staticmethod
    def _read(pending: dict[str, Tensor]) -> dict[str, Any]:
        """Every pending value on the host in one device-to-host transfer (histograms as lists)."""
        if not pending:
            return {}
        parts = [t.detach().float().reshape(-1) for t in pending.values()]
        device = parts[0].device
        flat = torch.cat([t.to(device) for t in parts]).tolist()
        out: dict[str, Any] = {}
        i = 0
        for key, t in zip(pending, parts):
            n = t.numel()
            out[key] = flat[i] if key.startswith("diag/") and not key.startswith("diag/hist/") else flat[i : i + n]
            i += n
        return out


def diagnostics_callbacks(cfg: DiagnosticsConfig) -> list[Callback]:
    """The callbacks the recipe's ``diagnostics:`` group asks for."""
    from trainkit.callbacks.nan_guard import NaNGuard

    out: list[Callback] = [NaNGuard(cfg.nan_check_every_n_steps)] if cfg.nan_guard else []
    if cfg.monitors:
        out.append(Monitors(cfg.every_n_steps, cfg.activations, cfg.histograms))
    return out
