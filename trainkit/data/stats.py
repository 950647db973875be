"""Standardization statistics and their application on the training device.

The statistics come from the training split only: all of it for in-memory sources, a seeded
sample of ``data.stats_sample`` training images for file sources (read in DataLoader
workers, summed per channel there, so no image is held), or from the recipe: ``data.mean`` /
``data.std`` (per channel, in the ``[0, 1]`` scale of the inputs: pixel / 255 for 8-bit
images, raw units for tables) or a named set, ``data.mean: imagenet`` (or ``cifar10``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from trainkit.errors import ConfigError
from trainkit.registry import Registry

NAMED_STATS: Registry[tuple[tuple[float, ...], tuple[float, ...]]] = Registry("statistics set")
NAMED_STATS.register("imagenet", ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
                     description="ImageNet's RGB mean and std (torchvision's), in the [0, 1] scale")
NAMED_STATS.register("cifar10", ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
                     description="CIFAR-10's RGB mean and std, in the [0, 1] scale")


def standardization_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per channel (images ``N,C,H,W``) or per feature (tables ``N,F``).

    Constant channels get std 1, so they map to zero instead of dividing by zero.
    """
    axes = (0, 2, 3) if x.ndim == 4 else (0,)
    mean = x.mean(axis=axes, keepdims=True)
    std = x.std(axis=axes, keepdims=True)
    std[std < 1e-8] = 1.0
    return mean.squeeze(0), std.squeeze(0)


def from_sums(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std ``(C,1,1)`` float32 from ``[count, sum, sum of squares]`` rows."""
    n, s, ss = sums
    mean = s / n
    std = np.sqrt(np.maximum(ss / n - mean * mean, 0.0))
    std[std < 1e-8] = 1.0
    return mean.astype(np.float32).reshape(-1, 1, 1), std.astype(np.float32).reshape(-1, 1, 1)


def given_stats(mean: list[float] | str | None, std: list[float] | None, shape: tuple[int, ...],
                max_value: float) -> tuple[np.ndarray, np.ndarray] | None:
    """``data.mean`` / ``data.std`` in the units of the raw inputs, shaped as computed ones;
    None when the recipe gives none (the data's own statistics are used).

    Raises:
        ConfigError: one without the other, a wrong length, an unknown name, a std <= 0.
    """
    if mean is None and std is None:
        return None
    if isinstance(mean, str):
        if std is not None:
            raise ConfigError(f"a named set ({mean!r}) gives the std too; drop data.std", "data.std")
        try:
            mean, std = NAMED_STATS.get(mean)
        except ConfigError as e:
            raise e.with_key("data.mean") from None
    if mean is None or std is None:
        raise ConfigError("data.mean and data.std go together (or data.mean: a named set, e.g. imagenet)",
                          "data.std" if std is None else "data.mean")
    per = shape[0]  # channels of an image, features of a table
    for key, v in (("data.mean", mean), ("data.std", std)):
        if len(v) != per:
            raise ConfigError(f"needs {per} values (one per {'channel' if len(shape) == 3 else 'feature'}), got {len(v)}", key)
    if min(std) <= 0:
        raise ConfigError(f"must be > 0, got {list(std)}", "data.std")
    view = (-1, 1, 1) if len(shape) == 3 else (-1,)
    scale = np.float32(max_value)
    return (np.asarray(mean, np.float32).reshape(view) * scale, np.asarray(std, np.float32).reshape(view) * scale)


class Standardize:
    """``(x - mean) / std`` on the device the batch is on, from uint8 (or raw float) inputs.

    The statistics are copied to a device once and kept there, so a step makes no transfer.
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray):
        self.mean = torch.from_numpy(np.ascontiguousarray(mean, np.float32))
        self.std = torch.from_numpy(np.ascontiguousarray(std, np.float32))
        self._on: dict[Any, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        key = x.device
        if key not in self._on:
            self._on[key] = (self.mean.to(x.device), self.std.to(x.device))
        mean, std = self._on[key]
        return (x.float() - mean) / std
