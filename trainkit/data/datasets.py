"""Datasets by name (``data.dataset``), each a loader returning a :class:`ArrayData`.

The embedded defaults come with scikit-learn, so they need no download: ``digits``
(1,797 8x8 grey images, 10 classes) and ``breast_cancer`` (569 x 30 features, 2 classes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainkit.registry import Registry


@dataclass(frozen=True)
class ArrayData:
    """A whole dataset in memory.

    Attributes:
        x: inputs, float32, ``(N, C, H, W)`` for images or ``(N, F)`` for tables.
        y: integer class labels in ``[0, len(classes))``, shape ``(N,)``.
        classes: class names, index = label.
    """

    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]

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
    return ArrayData(x, d.target.astype(np.int64), tuple(str(c) for c in d.target_names))


@DATASETS.register("breast_cancer")
def breast_cancer() -> ArrayData:
    """scikit-learn's Wisconsin breast cancer table: 569 x 30 features, malignant (0) / benign (1)."""
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    return ArrayData(d.data.astype(np.float32), d.target.astype(np.int64), tuple(d.target_names))
