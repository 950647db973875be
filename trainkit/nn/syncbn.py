"""Batch norm synchronized across processes on the CPU (gloo), where torch's cannot run.

``torch.nn.SyncBatchNorm`` only accepts GPU/XPU inputs, and DDP refuses it on CPU modules
("SyncBatchNorm layers only work with GPU modules", torch 2.13), so a multi-process CPU run
would silently keep per-process batch statistics. :class:`CPUSyncBatchNorm` reduces the batch
mean and variance over all ranks with torch's differentiable ``all_reduce``
(``torch.distributed.nn.functional``): its backward all-reduces the gradients, so every rank
gets the gradient of the global-batch statistics, exactly as torch's GPU kernel does.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.nn.functional import all_reduce
from torch.nn.modules.batchnorm import _BatchNorm


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class CPUSyncBatchNorm(_BatchNorm):
    """Batch norm over the union of all ranks' batches (any input ``N, C, *``); plain batch norm
    with one process or in eval mode."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-d input (N, C, ...), got {input.dim()}-d")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and _distributed()):
            return super().forward(x)
        self._check_input_dim(x)
        dtype = x.dtype
        if dtype in (torch.float16, torch.bfloat16):
            x = x.float()  # statistics in float32 under bf16/fp16 autocast, as batch norm's kernels
        dims = [0, *range(2, x.dim())]
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        count = all_reduce(x.new_full((1,), x.numel() / x.shape[1]))
        # two passes (mean, then squared deviations): no E[x^2] - E[x]^2 cancellation
        mean = all_reduce(x.sum(dims)) / count
        centred = x - mean.view(shape)
        var = all_reduce(centred.pow(2).sum(dims)) / count
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), count)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, n: Tensor) -> None:
        # tensor arithmetic throughout: no value is read on the host in the step
        self.num_batches_tracked.add_(1)
        momentum = 1.0 / self.num_batches_tracked.float() if self.momentum is None else self.momentum
        unbiased = var * (n / (n - 1.0).clamp_min(1.0))  # running_var is unbiased, as in F.batch_norm
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)


def convert_cpu_sync_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every batch norm replaced by :class:`CPUSyncBatchNorm` (state kept)."""
    if isinstance(module, _BatchNorm) and not isinstance(module, (CPUSyncBatchNorm, nn.SyncBatchNorm)):
        synced = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                  module.track_running_stats)
        synced.load_state_dict(module.state_dict())
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        setattr(module, name, convert_cpu_sync_batchnorm(child))
    return module


__all__ = ["CPUSyncBatchNorm", "convert_cpu_sync_batchnorm"]
