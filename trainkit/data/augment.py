"""Albumentations pipelines from the recipe (``data.augment: {train: ..., eval: ...}``).

Each of ``train`` and ``eval`` is ``null`` (no augmentation), a preset name (``trainkit list
augmentations``) or a pipeline in albumentations' own serialization format (``A.to_dict``;
``A.from_dict`` loads it). Pipelines run per sample on HWC images scaled to ``[0, 1]``; the
data module standardizes afterwards.

albumentations ignores global seeds, so every pipeline gets ``Compose(seed=...)`` from the
recipe seed; eval pipelines are re-seeded per sample index, so evaluation is the same every
epoch even when an eval pipeline is random (test-time augmentation).
"""

from __future__ import annotations

import json
from typing import Any, Callable

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from trainkit.errors import ConfigError
from trainkit.registry import Registry

AUGMENTATIONS: Registry[Callable[[int, int], list[Any]]] = Registry("augmentation preset")
PIPELINE_SPLITS = ("train", "eval")


@AUGMENTATIONS.register("cifar")
def cifar(h: int, w: int) -> list[Any]:
    """Pad 4 pixels (zeros), random crop back to the input size, horizontal flip."""
    return [
        A.PadIfNeeded(min_height=h + 8, min_width=w + 8, border_mode=cv2.BORDER_CONSTANT, fill=0),
        A.RandomCrop(height=h, width=w),
        A.HorizontalFlip(p=0.5),
    ]


@AUGMENTATIONS.register("imagenet")
def imagenet(h: int, w: int) -> list[Any]:
    """Random resized crop (8-100% of the area), horizontal flip, color jitter (p 0.8)."""
    return [
        A.RandomResizedCrop(size=(h, w), scale=(0.08, 1.0)),
        A.HorizontalFlip(p=0.5),
        A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8),
    ]


@AUGMENTATIONS.register("affine")
def affine(h: int, w: int) -> list[Any]:
    """Translate (10%), rotate (15 deg), scale (0.9-1.1), shear (10 deg)."""
    return [A.Affine(translate_percent=(-0.1, 0.1), rotate=(-15, 15), scale=(0.9, 1.1), shear=(-10, 10), p=1.0)]


@AUGMENTATIONS.register("color")
def color(h: int, w: int) -> list[Any]:
    """Color jitter: brightness, contrast, saturation 0.4, hue 0.1."""
    return [A.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=1.0)]


def check_augment(augment: dict[str, Any] | None) -> dict[str, str | dict[str, Any] | None]:
    """The ``data.augment`` value checked and completed to ``{train: spec, eval: spec}``.

    Raises:
        ConfigError: unknown keys, an unknown preset, or a dict albumentations cannot load.
    """
    if augment is None:
        return {s: None for s in PIPELINE_SPLITS}
    if not isinstance(augment, dict) or set(augment) - set(PIPELINE_SPLITS):
        raise ConfigError(f"must be {{train: SPEC, eval: SPEC}}, got {augment!r}", "data.augment")
    specs = {s: augment.get(s) for s in PIPELINE_SPLITS}
    for split, spec in specs.items():
        key = f"data.augment.{split}"
        if spec is None:
            continue
        if isinstance(spec, dict):
            _from_dict(spec, key)
        elif isinstance(spec, str):
            try:
                AUGMENTATIONS.get(spec)
            except ConfigError as e:
                raise e.with_key(key) from None
        else:
            raise ConfigError(f"must be null, a preset name or an albumentations dict, got {spec!r}", key)
    return specs


def _from_dict(spec: dict[str, Any], key: str) -> A.Compose:
    # accept both A.to_dict's {"__version__", "transform": {...}} and a bare transform dict
    wrapped = spec if "transform" in spec else {"transform": spec}
    try:
        pipe = A.from_dict(wrapped)
    except Exception as e:  # albumentations raises ValueError/KeyError/TypeError/pydantic errors
        raise ConfigError(f"not a loadable albumentations pipeline: {type(e).__name__}: {e}", key) from None
    return pipe if isinstance(pipe, A.Compose) else A.Compose([pipe])


def build_pipeline(spec: str | dict[str, Any] | None, h: int, w: int, seed: int, key: str = "data.augment") -> A.Compose | None:
    """The seeded pipeline for a checked spec and an input size; None for no augmentation."""
    if spec is None:
        return None
    pipe = A.Compose(AUGMENTATIONS.get(spec)(h, w), seed=seed) if isinstance(spec, str) else _from_dict(spec, key)
    pipe.set_random_seed(seed)
    return pipe


def pipeline_dict(pipe: A.Compose | None) -> dict[str, Any] | None:
    """``A.to_dict`` as plain YAML/JSON types (tuples become lists), loadable by ``A.from_dict``."""
    return None if pipe is None else json.loads(json.dumps(A.to_dict(pipe)))


class AugmentedImages(Dataset):
    """Images augmented per sample, then standardized: ``(C,H,W) float32 tensor, label``.

    Args:
        x: raw images ``N,C,H,W`` (values in ``[0, max_value]``).
        y: labels.
        pipeline: the albumentations pipeline (on HWC images in ``[0, 1]``).
        max_value: pixel scale of ``x``.
        mean, std: standardization statistics ``C,1,1`` of the raw training images.
        reseed: re-seed the pipeline with ``seed + index`` per sample (eval: same output every epoch).
    """

    def __init__(
        self, x: np.ndarray, y: np.ndarray, pipeline: A.Compose, max_value: float,
        mean: np.ndarray, std: np.ndarray, reseed: int | None = None,
    ):
        self.x, self.y, self.pipeline, self.max_value = x, y, pipeline, max_value
        self.mean, self.std, self.reseed = mean, std, reseed

    def __len__(self) -> int:
        return len(self.y)

    def image(self, i: int) -> np.ndarray:
        """Sample ``i`` augmented, HWC in the ``[0, 1]`` scale albumentations works in."""
        if self.reseed is not None:
            self.pipeline.set_random_seed(self.reseed + i)
        img = np.ascontiguousarray(self.x[i].transpose(1, 2, 0)) / np.float32(self.max_value)
        out = self.pipeline(image=img)["image"]
        return out[..., None] if out.ndim == 2 else out

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        # contiguous CHW before the arithmetic: broadcasting over the strided view is ~2.5x slower
        img = np.ascontiguousarray(self.image(i).transpose(2, 0, 1)) * np.float32(self.max_value)
        x = (img - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.tensor(self.y[i])
