"""Datasets by name (``data.dataset``), each a loader returning a :class:`ArrayData`.

The embedded defaults come with scikit-learn, so they need no download: ``digits``
(1,797 8x8 grey images, 10 classes) and ``breast_cancer`` (569 x 30 features, 2 classes).
``synthetic`` makes images or tables of any shape with a learnable signal; ``image_folder`` and
the torchvision sets live in :mod:`trainkit.data.files`. A loader takes its recipe arguments
(``data.root``, ``data.download``, ``data.dataset_args``) as keyword arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from trainkit.registry import Registry


@dataclass(frozen=True)
class ArrayData:
    """A whole dataset in memory.

    Attributes:
        x: inputs, float32, ``(N, C, H, W)`` for images or ``(N, F)`` for tables.
        y: integer class labels in ``[0, len(classes))``, shape ``(N,)``.
        classes: class names, index = label.
        max_value: the largest value a pixel can take (255 for 8-bit images, 16 for digits);
            augmentation sees images scaled by it to ``[0, 1]``, as albumentations expects.
        test: the dataset's own test split, when it has one (it then replaces
            ``data.test_fraction``).
    """

    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    max_value: float = 1.0
    test: ArrayData | None = None

    kind: ClassVar[str] = "memory"  # see trainkit.data.sources

    @property
    def is_image(self) -> bool:
        return self.x.ndim == 4

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


DATASETS: Registry = Registry("dataset")


@DATASETS.register("digits")
def digits() -> ArrayData:
    """scikit-learn's 8x8 handwritten digits: 1,797 grey images (values 0-16), 10 classes."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.float32)[:, None, :, :]
    return ArrayData(x, d.target.astype(np.int64), tuple(str(c) for c in d.target_names), max_value=16.0)


@DATASETS.register("breast_cancer")
def breast_cancer() -> ArrayData:
    """scikit-learn's Wisconsin breast cancer table: 569 x 30 features, malignant (0) / benign (1)."""
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    return ArrayData(d.data.astype(np.float32), d.target.astype(np.int64), tuple(d.target_names))


@DATASETS.register("synthetic")
def synthetic(
    shape: tuple[int, ...] | list[int] = (3, 16, 16),
    num_classes: int = 4,
    size: int = 512,
    noise: float = 0.5,
    seed: int = 0,
) -> ArrayData:
    """Images (``shape: [C, H, W]``) or tables (``shape: [F]``) of Gaussian class prototypes plus noise.

    Each class has a fixed random prototype in ``[0, 1]``; a sample is its class prototype plus
    ``noise`` times Gaussian noise, clipped to ``[0, 1]``: learnable, and harder as noise grows.
    Classes are balanced (``size`` samples in all).
    """
    from trainkit.errors import ConfigError

    shape = tuple(int(s) for s in shape)
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise ConfigError(f"shape must be [F] (table) or [C, H, W] (image) of positive sizes, got {list(shape)}", "data.dataset_args.shape")
    if num_classes < 2 or size < num_classes:
        raise ConfigError(f"need num_classes >= 2 and size >= num_classes, got {num_classes} and {size}", "data.dataset_args")
    rng = np.random.default_rng(seed)
    prototypes = rng.random((num_classes, *shape), dtype=np.float32)
    y = np.arange(size, dtype=np.int64) % num_classes
    rng.shuffle(y)
    x = prototypes[y] + noise * rng.standard_normal((size, *shape), dtype=np.float32)
    return ArrayData(np.clip(x, 0, 1).astype(np.float32), y, tuple(f"class{c}" for c in range(num_classes)))


def _register_file_readers() -> None:
    # image_folder, the torchvision sets, table and streaming register themselves on import
    import trainkit.data.files  # noqa: F401
    import trainkit.data.shards  # noqa: F401
    import trainkit.data.tables  # noqa: F401


_register_file_readers()
