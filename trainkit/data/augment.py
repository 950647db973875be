"""Albumentations pipelines from the recipe (``data.augment: {train: ..., eval: ...}``).

Each of ``train`` and ``eval`` is ``null`` (no augmentation), a preset name (``trainkit list
augmentations``) or a pipeline in albumentations' own serialization format (``A.to_dict``;
``A.from_dict`` loads it). Pipelines run per sample on HWC images scaled to ``[0, 1]``; the
data module standardizes afterwards.

albumentations ignores global seeds (and seeds in DataLoader workers restart from the pipeline's
seed), so no sample draws from a running stream: :func:`seed_pipeline` sets the pipeline's
random state from (seed, epoch, sample index) before each training sample (the training
sampler yields ``(epoch, index)`` keys, so workers hold no epoch state), and from (seed,
index) before each evaluation sample. The draws are then distinct across samples, workers and
epochs, the same for any ``num_workers`` or ``persistent_workers``, and the same after a resume.
"""

from __future__ import annotations

import hashlib
import json
import random
import struct
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


class KeyedRandom:
    """One NumPy generator whose state is set from a key in place, and a ``random.Random``
    that draws from it: the pair albumentations' transforms draw from.

    ``np.random.default_rng(key)`` builds a SeedSequence and a new generator (~35 us, more in
    a worker whose caches the image work has just emptied), and seeding a Mersenne Twister
    another ~10 us: a tenth of a 256x256 sample's decode and augmentation. Here the key is
    hashed (BLAKE2b) into a PCG64 state and increment, set on a generator made once.
    """

    def __init__(self) -> None:
        self.numpy = np.random.Generator(np.random.PCG64(0))
        self.python = _NumpyRandom(self.numpy)

    def reset(self, *key: int) -> None:
        """Set the state to a function of ``key`` (non-negative ints below 2**64)."""
        d = hashlib.blake2b(struct.pack(f"<{len(key)}Q", *key), digest_size=32).digest()
        self.numpy.bit_generator.state = {
            "bit_generator": "PCG64", "has_uint32": 0, "uinteger": 0,
            "state": {"state": int.from_bytes(d[:16], "little"), "inc": int.from_bytes(d[16:], "little") | 1},
        }


class _NumpyRandom(random.Random):
    """``random.Random`` drawing from a NumPy generator (``random`` and ``getrandbits`` are the
    two methods every other one of ``random.Random`` is built on)."""

    def __init__(self, gen: np.random.Generator):
        self.gen = gen
        super().__init__(0)

    def random(self) -> float:
        return float(self.gen.random())

    def getrandbits(self, k: int) -> int:
        return int.from_bytes(self.gen.bytes((k + 7) // 8), "little") >> (-k % 8)

    def __reduce__(self) -> tuple:  # random.Random's pickles call the class with no argument
        return _NumpyRandom, (self.gen,)


def seed_pipeline(pipe: A.Compose, seed: int, epoch: int | None, index: int) -> None:
    """Set ``pipe``'s random state to a function of ``(seed, epoch, index)`` (``epoch`` None:
    an evaluation draw, fixed per index). Every transform draws from one :class:`KeyedRandom`
    kept on the pipeline (a DataLoader worker has its own copy of it)."""
    keyed = pipe.__dict__.get("_trainkit_random")
    if keyed is None:
        keyed = pipe.__dict__["_trainkit_random"] = KeyedRandom()
    keyed.reset(seed % (1 << 64), 0 if epoch is None else epoch + 1, index)
    pipe.set_random_state(keyed.numpy, keyed.python)  # again each time: a set_random_seed may have replaced it


def forced_on(pipe: A.Compose) -> A.Compose:
    """A copy of ``pipe`` with every transform's probability set to 1 (size checks: a
    ``Resize`` albumentations applies with p 0.5 must not pass a check half of the time)."""

    def force(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (1.0 if k == "p" else force(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [force(v) for v in node]
        return node

    return A.from_dict(force(A.to_dict(pipe)))


def output_shapes(pipe: A.Compose, shapes: list[tuple[int, ...]], dtype: Any, draws: int = 3) -> set[tuple[int, int]]:
    """The ``(h, w)`` sizes ``pipe`` gives, every transform forced on, for inputs of ``shapes``
    (HWC) over a few seeded draws (to meet each branch of a OneOf)."""
    probe = forced_on(pipe)
    rng = np.random.default_rng(0)
    out = set()
    for shape in shapes:
        img = rng.integers(0, 256, shape).astype(np.uint8) if dtype == np.uint8 else rng.random(shape, dtype=np.float32)
        for d in range(draws):
            seed_pipeline(probe, 0, None, d)
            out.add(tuple(int(v) for v in probe(image=img)["image"].shape[:2]))
    return out


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
        seed: the augmentation seed.
        train: a training split: a key ``(epoch, i)`` (the training sampler's) draws from
            (seed, epoch, i); a plain index ``i`` draws afresh each time (previews). Otherwise
            every key draws from (seed, i): evaluation is the same every epoch.
    """

    def __init__(
        self, x: np.ndarray, y: np.ndarray, pipeline: A.Compose, max_value: float,
        mean: np.ndarray, std: np.ndarray, seed: int = 0, train: bool = True,
    ):
        self.x, self.y, self.pipeline, self.max_value = x, y, pipeline, max_value
        self.mean, self.std, self.seed, self.train = mean, std, seed, train

    def __len__(self) -> int:
        return len(self.y)

    def image(self, key: Any) -> np.ndarray:
        """Sample ``key`` augmented, HWC in the ``[0, 1]`` scale albumentations works in."""
        epoch, i = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (None, int(key))
        if epoch is not None or not self.train:
            seed_pipeline(self.pipeline, self.seed, epoch, i)
        img = np.ascontiguousarray(self.x[i].transpose(1, 2, 0)) / np.float32(self.max_value)
        out = self.pipeline(image=img)["image"]
        return out[..., None] if out.ndim == 2 else out

    def __getitem__(self, key: Any) -> tuple[torch.Tensor, int]:
        i = int(key[1]) if isinstance(key, (tuple, list)) else int(key)
        # contiguous CHW before the arithmetic: broadcasting over the strided view is ~2.5x slower
        img = np.ascontiguousarray(self.image(key).transpose(2, 0, 1)) * np.float32(self.max_value)
        x = (img - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), int(self.y[i])  # integer class labels
