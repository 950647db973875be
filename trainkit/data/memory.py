"""The in-memory fast path (``data.loader: memory``): whole splits as tensors on the device.

For data that fit in memory, per-sample loading (a Python ``__getitem__`` and a collate per
sample) costs more than a small model's step. Here a split is standardized once, kept on
the training device, and each batch is one index slice. The training order is exactly the
DataLoader path's (the same :class:`~trainkit.data.loader.EpochSampler`: one permutation
per (seed, epoch), disjoint per rank), and the position is saved in checkpoints the same
way, so the two paths train the same weights and resume the same way.

Augmentation is limited to what is a batched tensor op: horizontal/vertical flip and
pad-and-random-crop (a translation with constant fill), drawn per sample from a generator on
the training device re-seeded per (seed, epoch, rank, batch), so a mid-epoch resume redraws the
same values and a step reads no tensor value on the host (seeding a CUDA generator is a host
operation; the draws stay on the device).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import albumentations as A
import cv2
import numpy as np
import torch

from trainkit.data.loader import EpochSampler
from trainkit.errors import ConfigError

LOADERS = ("dataloader", "memory")
SUPPORTED = "null, the 'cifar' preset, or an albumentations pipeline of HorizontalFlip, VerticalFlip and PadIfNeeded (constant border) + RandomCrop back to the input size"


@dataclass
class BatchAugment:
    """Per-sample random flips and pad-crop, applied to a whole batch at once.

    Args:
        hflip, vflip: probability of flipping each sample left-right / up-down.
        pad: pixels of constant padding on each side before a random crop back to the input size
            (0: no crop); each sample gets its own offset in ``[0, 2 * pad]`` per axis.
        fill: value of the padding, per channel ``(C,)``, in the units of the batch.
    """

    hflip: float = 0.0
    vflip: float = 0.0
    pad: int = 0
    fill: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        if self.pad:
            p = self.pad
            fill = torch.zeros(c) if self.fill is None else self.fill
            padded = fill.to(x.device, x.dtype).view(1, c, 1, 1).expand(n, c, h + 2 * p, w + 2 * p).clone()
            padded[..., p : p + h, p : p + w] = x
            dy, dx = torch.randint(0, 2 * p + 1, (2, n), generator=gen, device=x.device)
            # gather rows then columns: out[i, :, r, s] = padded[i, :, r + dy_i, s + dx_i]
            rows = (dy[:, None] + torch.arange(h, device=x.device)).view(n, 1, h, 1).expand(n, c, h, w + 2 * p)
            x = padded.gather(2, rows)
            cols = (dx[:, None] + torch.arange(w, device=x.device)).view(n, 1, 1, w).expand(n, c, h, w)
            x = x.gather(3, cols)
        for prob, dim in ((self.hflip, 3), (self.vflip, 2)):
            if prob > 0:
                flip = torch.rand(n, generator=gen, device=x.device) < prob
                x = torch.where(flip.view(n, 1, 1, 1), x.flip(dim), x)
        return x


def batch_augment(pipeline: A.Compose | None, h: int, w: int, fill: torch.Tensor) -> BatchAugment | None:
    """The batched equivalent of an albumentations pipeline, or ``None`` for no augmentation.

    ``fill``: the padding value per channel in standardized units (raw 0 standardized).

    Raises:
        ConfigError: (``data.augment``) a transform that is not a batched flip or pad-crop.
    """
    if pipeline is None:
        return None
    aug, pending = BatchAugment(), None
    for t in pipeline.transforms:
        name = type(t).__name__
        if name in ("HorizontalFlip", "VerticalFlip"):
            setattr(aug, "hflip" if name == "HorizontalFlip" else "vflip", float(t.p))
            continue
        if name == "PadIfNeeded" and t.p == 1 and t.border_mode == cv2.BORDER_CONSTANT and t.min_height - h == t.min_width - w >= 0 \
                and (t.min_height - h) % 2 == 0 and not isinstance(t.fill, (tuple, list)) and float(t.fill) == 0:
            pending = (t.min_height - h) // 2
            continue
        if name == "RandomCrop" and pending is not None and t.p == 1 and (t.height, t.width) == (h, w):
            aug.pad, aug.fill, pending = pending, fill, None
            continue
        raise ConfigError(f"{name} is not a batched op of data.loader: memory (it supports {SUPPORTED})", "data.augment")
    if pending is not None:
        raise ConfigError(f"PadIfNeeded needs a RandomCrop back to {h}x{w} with data.loader: memory", "data.augment")
    return aug


class MemoryLoader:
    """Batches sliced from tensors held on the device, in :class:`EpochSampler` order (train)
    or in order (eval). Same ``state_dict`` as :class:`~trainkit.data.loader.ResumableLoader`.

    Args:
        x, y: the standardized split, already on the training device.
        batch_size: samples per batch.
        sampler: the training order; ``None`` for evaluation (sequential, every sample once).
        progress: batches the trainer has processed in the current epoch (resume position).
        augment: batched augmentation (training only).
        seed: seed of the augmentation stream.
    """

    def __init__(
        self, x: torch.Tensor, y: torch.Tensor, batch_size: int, sampler: EpochSampler | None = None,
        progress: Callable[[], int] | None = None, augment: BatchAugment | None = None, seed: int = 0,
    ):
        self.x, self.y, self.batch_size, self.sampler = x, y, batch_size, sampler
        self.progress, self.augment, self.seed = progress, augment, seed
        self.batch_sampler = None  # Lightning inspects it on any loader with a `sampler`
        self.served = 0
        self._resume: tuple[int, int] | None = None
        self.gen = torch.Generator(device=x.device)  # the draws of a batch stay on its device

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else len(self.y)
        return -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.sampler is None:
            for i in range(0, len(self.y), self.batch_size):
                yield self.x[i : i + self.batch_size], self.y[i : i + self.batch_size]
            return
        sampler, b = self.sampler, self.batch_size
        start = 0
        if self._resume is not None and self._resume[0] == sampler.epoch:
            start = self._resume[1]
        self._resume = None
        order = torch.tensor(list(sampler), device=self.x.device)
        self.served = start
        for k in range(start, len(self)):
            idx = order[k * b : (k + 1) * b]
            x = self.x[idx]
            if self.augment is not None:
                self.gen.manual_seed(batch_seed(self.seed, int(sampler.epoch), int(sampler.rank), k))
                x = self.augment(x, self.gen)
            self.served += 1
            yield x, self.y[idx]

    def state_dict(self) -> dict[str, int]:
        served = self.progress() if self.progress is not None else self.served
        epoch = self.sampler.epoch if self.sampler is not None else 0
        return {"epoch": int(epoch), "served": int(served)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        # applied when the epoch it belongs to starts (an epoch-end checkpoint never skips)
        self._resume = (state["epoch"], state["served"])
        if self.sampler is not None:
            self.sampler.set_epoch(state["epoch"])


def batch_seed(*key: int) -> int:
    """A generator seed that is a function of ``key`` (NumPy's SeedSequence mixing: distinct
    keys give unrelated streams, unlike ``seed + k``).

    >>> batch_seed(0, 1, 0, 3) == batch_seed(0, 1, 0, 3) != batch_seed(0, 1, 0, 4)
    True
    """
    return int(np.random.SeedSequence([k % (1 << 63) for k in key]).generate_state(1, np.uint64)[0] >> 2)


def check_loader(loader: str) -> str:
    """``data.loader`` checked: ``dataloader`` or ``memory``."""
    if loader not in LOADERS:
        raise ConfigError(f"unknown loader {loader!r} (valid: {', '.join(LOADERS)})", "data.loader")
    return loader


def device_tensors(ds: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The tensors of a standardized ``TensorDataset``, moved to ``device`` once."""
    x, y = ds.tensors
    return x.to(device), y.to(device)
