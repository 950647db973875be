"""GPU settings a user would expect, on by default where they help, recorded in the run's config.

- ``gpu.matmul_precision`` (``torch.set_float32_matmul_precision``): ``high`` lets float32
  matmuls run on TF32 tensor cores (10-bit mantissa inputs, float32 accumulation), ``medium``
  on bf16, ``highest`` is full float32. ``null``: ``high`` when training on CUDA, else
  torch's own default (``highest``). Convolutions use TF32 under cuDNN by torch's default.
- ``trainer.benchmark`` (Lightning's key for ``torch.backends.cudnn.benchmark``: cuDNN times
  its convolution algorithms for each input shape and keeps the fastest): ``null``: on for
  image training on CUDA with fixed shapes (no ``data.batch_ramp``), off with
  ``trainer.deterministic`` (cuDNN's choice may vary between runs) and everywhere else.

Both are resolved before the run dir is written, so ``config.yaml`` and the W&B config hold the
values the run used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from trainkit.errors import ConfigError

PRECISIONS = ("highest", "high", "medium")


@dataclass
class GPUConfig:
    """The recipe's ``gpu:`` keys.

    Args:
        matmul_precision: float32 matmul precision: ``highest``, ``high`` (TF32) or ``medium``
            (bf16); ``null``: ``high`` when training on CUDA, ``highest`` otherwise.
    """

    matmul_precision: str | None = None

    def __post_init__(self) -> None:
        if self.matmul_precision is not None and self.matmul_precision not in PRECISIONS:
            raise ConfigError(f"must be null or one of {', '.join(PRECISIONS)}, got {self.matmul_precision!r}",
                              "gpu.matmul_precision")


def on_cuda(accelerator: Any) -> bool:
    """Whether a trainer with this ``trainer.accelerator`` trains on CUDA on this machine."""
    name = str(accelerator or "auto").lower()
    return torch.cuda.is_available() and (name in ("auto", "gpu", "cuda") or "cuda" in name)


def resolve(cfg: GPUConfig, benchmark: bool | None, cuda: bool, images: bool, fixed_shapes: bool,
            deterministic: bool) -> tuple[str, bool]:
    """The ``(matmul_precision, cudnn benchmark)`` a run uses, given its keys (``None``: default).

    >>> resolve(GPUConfig(), None, cuda=True, images=True, fixed_shapes=True, deterministic=False)
    ('high', True)
    >>> resolve(GPUConfig(), None, cuda=False, images=True, fixed_shapes=True, deterministic=False)
    ('highest', False)
    >>> resolve(GPUConfig("medium"), False, cuda=True, images=True, fixed_shapes=True, deterministic=False)
    ('medium', False)
    """
    precision = cfg.matmul_precision or ("high" if cuda else "highest")
    if benchmark is None:
        benchmark = cuda and images and fixed_shapes and not deterministic
    return precision, bool(benchmark)


def apply(precision: str) -> None:
    """Set the process's float32 matmul precision (``trainer.benchmark`` goes to Lightning)."""
    torch.set_float32_matmul_precision(precision)
