"""Per-sample reading in DataLoader workers: decode, augment, collate as uint8; problems as markers.

A split of a file source (an image folder, a user's Dataset) is :class:`SourceSamples`: the
split's index array over the source, read one sample at a time in a worker. Each sample is
decoded to an HWC uint8 image, resized only where the pipeline needs a fixed input size,
augmented by albumentations at that size with a random draw that is a function of (seed,
epoch, sample index) (:func:`trainkit.data.augment.seed_pipeline`), and returned as a CHW
uint8 tensor; batches are collated as uint8 and standardized on the training device
(:class:`trainkit.data.stats.Standardize`), a quarter of the float32 host-to-device traffic.

An exception raised inside a worker reaches the main process wrapped in the worker's
traceback text; a corrupt file or a batch of mixed shapes is therefore passed on as a marker
(:class:`Unreadable`, :class:`BadBatch`) and turned into one clear
:class:`~trainkit.errors.ConfigError` by :class:`CheckedLoader` in the main process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from trainkit.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unreadable:
    """A sample whose file could not be decoded (in place of ``(input, label)``)."""

    path: str


@dataclass(frozen=True)
class BadBatch:
    """A batch that cannot be made; :class:`CheckedLoader` raises ``message`` as a ConfigError."""

    message: str
    key: str


def split_key(key: Any) -> tuple[int | None, int]:
    """``(epoch, position)`` of a sampler key: ``(epoch, i)`` from the training sampler, ``i`` otherwise."""
    if isinstance(key, (tuple, list)):
        return int(key[0]), int(key[1])
    return None, int(key)


def transform_image(img: np.ndarray, resize: tuple[int, int] | None, pipeline: Any, seed: int, epoch: int | None,
                    index: int) -> np.ndarray:
    """A decoded HWC (or HW) uint8 image resized to ``resize`` (None: as it is), then through
    ``pipeline`` seeded by ``(seed, epoch, index)``; HWC. File and streamed samples share it."""
    import cv2

    from trainkit.data.augment import seed_pipeline

    img = img[..., None] if img.ndim == 2 else img
    if resize is not None and img.shape[:2] != tuple(resize):
        img = cv2.resize(img, (resize[1], resize[0]), interpolation=cv2.INTER_AREA)
        img = img[..., None] if img.ndim == 2 else img
    if pipeline is not None:
        seed_pipeline(pipeline, seed, epoch, index)
        img = pipeline(image=img)["image"]
        img = img[..., None] if img.ndim == 2 else img
    return img


class SourceSamples(Dataset):
    """Split ``indices`` of a file source, one sample read per ``__getitem__``: ``(CHW uint8, label)``.

    Args:
        source: the source (``read(i)`` -> HWC or HW uint8 array, or None if unreadable;
            ``describe(i)`` names sample ``i`` in messages).
        indices: the split's indices into the source.
        labels: the split's labels (permuted ones under ``data.permute_labels``).
        pipeline: the albumentations pipeline (None: none), run on the uint8 image.
        seed: the augmentation seed.
        resize: ``(h, w)`` every image is resized to before the pipeline (None: as decoded).
    """

    def __init__(self, source: Any, indices: np.ndarray, labels: np.ndarray, pipeline: Any, seed: int,
                 resize: tuple[int, int] | None):
        self.source, self.indices, self.labels = source, np.asarray(indices, np.int64), np.asarray(labels, np.int64)
        self.pipeline, self.seed, self.resize = pipeline, seed, resize

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def y(self) -> np.ndarray:
        """The split's labels (the attribute doctor and preview read)."""
        return self.labels

    def image(self, key: Any) -> np.ndarray | None:
        """Sample ``key`` decoded and augmented, HWC uint8 (None if its file is unreadable)."""
        epoch, pos = split_key(key)
        i = int(self.indices[pos])
        img = self.source.read(i)
        return None if img is None else transform_image(img, self.resize, self.pipeline, self.seed, epoch, i)

    def __getitem__(self, key: Any) -> tuple[torch.Tensor, int] | Unreadable:
        pos = split_key(key)[1]
        if not self.source.is_image:  # a user's float inputs: as they are
            return torch.from_numpy(self.source.read(int(self.indices[pos]))), int(self.labels[pos])
        img = self.image(key)
        if img is None:
            return Unreadable(self.source.describe(int(self.indices[pos])))
        # a CHW view (the collate's stack writes the contiguous batch in one copy); the label a
        # Python int (the collate makes one int64 tensor of a batch's; a tensor per sample from a
        # NumPy scalar costs more than the label is worth)
        return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1), int(self.labels[pos])


    def raw_inputs(self, limit: int = 2000) -> np.ndarray:
        """The first ``limit`` inputs un-augmented, as float32 ``N,C,H,W`` at one size (the
        doctor's probes; read here, in the calling process)."""
        import cv2

        out: list[np.ndarray] = []
        for pos in range(min(limit, len(self))):
            img = self.source.read(int(self.indices[pos]))
            if img is None:
                continue
            img = img[..., None] if img.ndim == 2 else img
            hw = self.resize or (out[0].shape[1:] if out else img.shape[:2])
            if img.shape[:2] != tuple(hw):
                img = cv2.resize(img, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
                img = img[..., None] if img.ndim == 2 else img
            out.append(img.transpose(2, 0, 1))
        return np.stack(out).astype(np.float32)


class HostStandardized(Dataset):
    """A file split standardized per sample on the host: ``(float32 input, label)``, for the
    loops that feed the model themselves (predictions, the fit verdict's training subset)."""

    def __init__(self, samples: Dataset, standardize: Any, skip_corrupt: bool = False):
        self.samples, self.standardize, self.skip_corrupt = samples, standardize, skip_corrupt

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        item = self.samples[i]
        for k in range(1, len(self.samples) if self.skip_corrupt else 0):
            if not isinstance(item, Unreadable):
                break  # these loops cannot drop a sample from a batch: the next readable one stands in
            item = self.samples[(i + k) % len(self.samples)]
        if isinstance(item, Unreadable):
            raise ConfigError(f"cannot read image {item.path!r} (corrupt or not an image); remove it or set "
                              "data.dataset_args.skip_corrupt: true", "data.root")
        x, y = item
        return self.standardize(x[None])[0], y


class Collate:
    """Stack samples; corrupt files and mixed shapes become a :class:`BadBatch` (or are skipped).

    Args:
        skip_corrupt: drop unreadable samples from the batch with a logged warning instead.
        key: the recipe key a mixed-shape batch is blamed on.
    """

    def __init__(self, skip_corrupt: bool = False, key: str = "data.augment"):
        self.skip_corrupt, self.key = skip_corrupt, key

    def __call__(self, samples: list[Any]) -> Any:
        bad = [s for s in samples if isinstance(s, Unreadable)]
        if bad and not self.skip_corrupt:
            return BadBatch(f"cannot read image {bad[0].path!r} (corrupt or not an image); remove it or set "
                            "data.dataset_args.skip_corrupt: true", "data.root")
        for s in bad:
            log.warning("skipping unreadable image %s", s.path)
        samples = [s for s in samples if not isinstance(s, Unreadable)]
        if not samples:
            return BadBatch("every image of a batch was unreadable", "data.root")
        shapes = sorted({tuple(s[0].shape) for s in samples})
        if len(shapes) > 1:
            return BadBatch(f"one batch holds inputs of shapes {shapes}: every input must have one shape; "
                            "resize them (data.dataset_args.size) or end the pipeline in a fixed-size transform", self.key)
        return default_collate(samples)


class CheckedLoader(DataLoader):
    """A DataLoader that raises a :class:`BadBatch` from a worker as a ConfigError here."""

    def __iter__(self) -> Iterator[Any]:
        for batch in super().__iter__():
            if isinstance(batch, BadBatch):
                raise ConfigError(batch.message, batch.key)
            yield batch


def channel_sums(samples: list[Any]) -> Any:
    """Collate for statistics: per-channel pixel count, sum and sum of squares (float64) of a
    batch of images, computed in the worker so the main process holds no image."""
    bad = [s for s in samples if isinstance(s, Unreadable)]
    good = [s[0] for s in samples if not isinstance(s, Unreadable)]
    sums = np.zeros((3, good[0].shape[0] if good else 1), np.float64)
    for x in good:
        v = x.reshape(x.shape[0], -1).to(torch.float64)
        sums += np.stack([np.full(x.shape[0], v.shape[1], np.float64), v.sum(1).numpy(), (v * v).sum(1).numpy()])
    return sums, [b.path for b in bad]


def sampled_stats(samples: SourceSamples, shape: tuple[int, ...], workers: int, skip_corrupt: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (or per-feature) mean and std of ``samples``, summed batch by batch in
    ``workers`` DataLoader workers: no image reaches the calling process.

    Raises:
        ConfigError: an unreadable file (unless ``skip_corrupt``).
    """
    from trainkit.data.stats import from_sums

    total: Any = 0.0
    for sums, bad in DataLoader(samples, batch_size=32, num_workers=workers, collate_fn=channel_sums):
        if bad and not skip_corrupt:
            raise ConfigError(f"cannot read image {bad[0]!r} (corrupt or not an image); remove it or set "
                              "data.dataset_args.skip_corrupt: true", "data.root")
        total = total + sums
    mean, std = from_sums(total)
    return (mean, std) if len(shape) == 3 else (mean.reshape(shape), std.reshape(shape))


class ArrayImages:
    """Decoded 8-bit images ``N,C,H,W`` as a file source (predict's raw inputs for a file-source run)."""

    kind, is_image, test, max_value = "files", True, None, 255.0

    def __init__(self, x8: np.ndarray):
        self.x8 = x8

    def read(self, i: int) -> np.ndarray:
        return np.ascontiguousarray(self.x8[i].transpose(1, 2, 0))

    def describe(self, i: int) -> str:
        return f"input {i}"
