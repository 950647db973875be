"""Datasets read from files: the lazy ``image_folder`` source and the torchvision sets.

``image_folder`` is a *file source* (see :mod:`trainkit.data.sources`): the folder is
scanned once for paths, labels and image sizes (:mod:`trainkit.data.scan`, cached), and each
image is decoded with OpenCV when a DataLoader worker asks for it. The torchvision sets are
in-memory sources (:class:`~trainkit.data.datasets.ArrayData`), like the embedded ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainkit.data.datasets import DATASETS, ArrayData
from trainkit.data.scan import IMAGE_SUFFIXES, FileIndex, scan_folder
from trainkit.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["IMAGE_SUFFIXES", "ImageFiles", "image_folder", "read_image"]


@dataclass(frozen=True)
class ImageFiles:
    """A file source: the images of a folder, read on demand.

    Attributes:
        index: paths, labels and sizes (no pixels).
        channels: 3 (RGB) or 1 (grey).
        size: ``(h, w)`` the model sees (``data.dataset_args.size``); None: the images' own.
        skip_corrupt: drop unreadable files (at scan time, or from a batch at run time).
        test: the folder's own ``test/`` split.
    """

    index: FileIndex
    channels: int = 3
    size: tuple[int, int] | None = None
    skip_corrupt: bool = False
    test: ImageFiles | None = None

    kind = "files"
    max_value = 255.0
    is_image = True

    @property
    def y(self) -> np.ndarray:
        return self.index.labels

    @property
    def classes(self) -> tuple[str, ...]:
        return self.index.classes

    def sizes(self) -> np.ndarray:
        """Every image's ``(h, w)``, test split included."""
        return np.concatenate([self.index.sizes] + ([self.test.index.sizes] if self.test else []))

    def common_size(self) -> tuple[int, int] | None:
        """The one size every image has, or None when they differ."""
        sizes = np.unique(self.sizes(), axis=0)
        return (int(sizes[0][0]), int(sizes[0][1])) if len(sizes) == 1 else None

    def odd_one(self) -> str:
        """A message naming an image whose size differs from the first one's."""
        parts = [p for p in (self, self.test) if p is not None]
        h0, w0 = (int(v) for v in self.index.sizes[0])
        for part in parts:
            odd = np.flatnonzero((part.index.sizes != (h0, w0)).any(1))
            if len(odd):
                h, w = (int(v) for v in part.index.sizes[odd[0]])
                return f"image {part.index.path(int(odd[0]))!r} is {w}x{h}, others {w0}x{h0}"
        return "all images share one size"

    def read(self, i: int) -> np.ndarray | None:
        """Image ``i`` as HWC RGB (or HW grey) uint8; None if it cannot be decoded."""
        return read_image(self.index.path(i), self.channels)

    def describe(self, i: int) -> str:
        return self.index.path(i)


@DATASETS.register("image_folder")
def image_folder(
    root: str | None = None,
    size: tuple[int, int] | list[int] | None = None,
    channels: int = 3,
    skip_corrupt: bool = False,
) -> ImageFiles:
    """A folder of class subfolders of images (``root/<class>/*.png``), decoded per sample in workers.

    If ``root`` holds ``train/`` and ``test/`` folders (each of class subfolders), ``test/``
    is the dataset's own test split.

    Args:
        root: the folder (``data.root``).
        size: ``[H, W]`` the model sees. The training pipeline runs on each image at its own
            size when it ends in that size (``imagenet``'s random resized crop); otherwise
            images are resized to it first. Without it all images must share one size, or
            the pipeline must give one.
        channels: 3 (RGB) or 1 (grey).
        skip_corrupt: skip unreadable files with a logged warning instead of failing.

    Raises:
        ConfigError: a missing or unreadable folder, an empty class folder, a file that is
            not an image (unless skipped).
    """
    if root is None:
        raise ConfigError("image_folder needs the folder of class subfolders", "data.root")
    if channels not in (1, 3):
        raise ConfigError(f"must be 1 or 3, got {channels}", "data.dataset_args.channels")
    if size is not None and (len(size) != 2 or min(int(s) for s in size) < 1):
        raise ConfigError(f"must be [H, W] of positive sizes, got {list(size)}", "data.dataset_args.size")
    base = Path(root)
    if not base.is_dir():
        raise ConfigError(f"{root!r} is not a folder", "data.root")
    hw = (int(size[0]), int(size[1])) if size is not None else None
    if (base / "train").is_dir() and (base / "test").is_dir():
        train = _checked(scan_folder(base / "train"), skip_corrupt)
        test = _checked(scan_folder(base / "test", train.classes), skip_corrupt)
        return ImageFiles(train, channels, hw, skip_corrupt, ImageFiles(test, channels, hw, skip_corrupt))
    return ImageFiles(_checked(scan_folder(base), skip_corrupt), channels, hw, skip_corrupt)


def _checked(index: FileIndex, skip_corrupt: bool) -> FileIndex:
    bad = index.corrupt
    if len(bad) and not skip_corrupt:
        raise ConfigError(
            f"cannot read image {index.path(int(bad[0]))!r} (corrupt or not an image); remove it or set "
            "data.dataset_args.skip_corrupt: true", "data.root"
        )
    for i in bad:
        log.warning("skipping unreadable image %s", index.path(int(i)))
    index = index.without(bad) if len(bad) else index
    if not len(index):
        raise ConfigError(f"no readable images under {index.root!r}", "data.root")
    return index


def read_image(path: str | Path, channels: int, hw: tuple[int, int] | None = None) -> np.ndarray | None:
    """The image as HWC RGB (or HW grey) uint8, resized to ``hw``; None if unreadable."""
    import cv2

    # imdecode instead of imread: same decoders, no stderr noise, non-ASCII paths work; a
    # buffered read, not np.fromfile (which dups the descriptor and seeks: ~20 us more a file)
    try:
        with open(path, "rb") as fh:
            raw = np.frombuffer(fh.read(), dtype=np.uint8)
    except OSError:
        return None
    if not raw.size:
        return None
    img = cv2.imdecode(raw, cv2.IMREAD_COLOR if channels == 3 else cv2.IMREAD_GRAYSCALE)
    if img is None:
        return None
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if hw is not None and img.shape[:2] != tuple(hw):
        img = cv2.resize(img, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
    return img


# -- torchvision sets -------------------------------------------------------------------------
def _torchvision(cls_name: str, root: str | None, download: bool) -> ArrayData:
    try:
        import torchvision.datasets as tvd
    except ImportError:
        raise ConfigError(
            f"needs torchvision for {cls_name}: pip install 'trainkit[vision]'", "data.dataset"
        ) from None
    if root is None:
        raise ConfigError(f"{cls_name} needs the folder that holds (or will hold) its files", "data.root")
    cls = getattr(tvd, cls_name)
    try:
        train, test = (cls(root, train=t, download=download) for t in (True, False))
    except RuntimeError as e:  # torchvision's "Dataset not found or corrupted"
        raise ConfigError(f"{cls_name} under {root!r}: {e} (data.download: true fetches it)", "data.root") from None
    return ArrayData(*_arrays(train), tuple(train.classes), max_value=255.0, test=ArrayData(*_arrays(test), tuple(train.classes), 255.0))


def _arrays(ds: object) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(ds.data)  # CIFAR: N,H,W,C uint8 array; MNIST: N,H,W uint8 tensor
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x, dtype=np.float32), np.asarray(ds.targets, dtype=np.int64)


def _register(name: str, cls_name: str, what: str) -> None:
    def load(root: str | None = None, download: bool = False) -> ArrayData:
        return _torchvision(cls_name, root, download)

    load.__doc__ = f"{what} via torchvision (vision extra), own test split; data.root, data.download."
    DATASETS.register(name, load)


_register("cifar10", "CIFAR10", "CIFAR-10: 50,000 + 10,000 32x32 colour images, 10 classes,")
_register("cifar100", "CIFAR100", "CIFAR-100: 50,000 + 10,000 32x32 colour images, 100 classes,")
_register("mnist", "MNIST", "MNIST: 60,000 + 10,000 28x28 grey digits, 10 classes,")
_register("fashion_mnist", "FashionMNIST", "Fashion-MNIST: 60,000 + 10,000 28x28 grey clothing images, 10 classes,")
