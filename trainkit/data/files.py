"""Datasets read from files: ``image_folder`` (OpenCV) and the torchvision sets.

Both load the whole dataset into memory as an :class:`ArrayData` (float32 ``N,C,H,W`` with
8-bit pixel values, ``max_value`` 255), like the embedded ones, so splitting, statistics and
augmentation work the same for every source.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from trainkit.data.datasets import DATASETS, ArrayData
from trainkit.errors import ConfigError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@DATASETS.register("image_folder")
def image_folder(
    root: str | None = None,
    size: tuple[int, int] | list[int] | None = None,
    channels: int = 3,
    skip_corrupt: bool = False,
) -> ArrayData:
    """A folder of class subfolders of images (``root/<class>/*.png``), read with OpenCV.

    If ``root`` holds ``train/`` and ``test/`` folders (each of class subfolders), ``test/``
    is the dataset's own test split.

    Args:
        root: the folder (``data.root``).
        size: ``[H, W]`` every image is resized to; without it all images must share one size.
        channels: 3 (RGB) or 1 (grey).
        skip_corrupt: skip unreadable files with a logged warning instead of failing.

    Raises:
        ConfigError: a missing folder, an empty class folder, a corrupt file (unless skipped),
            or images of different sizes without ``size``.
    """
    if root is None:
        raise ConfigError("image_folder needs the folder of class subfolders", "data.root")
    if channels not in (1, 3):
        raise ConfigError(f"must be 1 or 3, got {channels}", "data.dataset_args.channels")
    base = Path(root)
    if not base.is_dir():
        raise ConfigError(f"{root!r} is not a folder", "data.root")
    hw = (int(size[0]), int(size[1])) if size is not None else None
    if (base / "train").is_dir() and (base / "test").is_dir():
        train = _read_folder(base / "train", hw, channels, skip_corrupt, None)
        test = _read_folder(base / "test", hw or train.x.shape[2:], channels, skip_corrupt, train.classes)
        return ArrayData(train.x, train.y, train.classes, max_value=255.0, test=test)
    return _read_folder(base, hw, channels, skip_corrupt, None)


def _read_folder(
    base: Path, hw: tuple[int, int] | None, channels: int, skip_corrupt: bool, classes: tuple[str, ...] | None
) -> ArrayData:
    found = tuple(sorted(p.name for p in base.iterdir() if p.is_dir()))
    if not found:
        raise ConfigError(f"{str(base)!r} has no class subfolders (expected {base}/<class>/<image files>)", "data.root")
    if classes is not None and found != classes:
        raise ConfigError(f"{str(base)!r} has classes {list(found)}, the training folder {list(classes)}", "data.root")
    import cv2

    flag = cv2.IMREAD_COLOR if channels == 3 else cv2.IMREAD_GRAYSCALE
    images, labels = [], []
    for label, name in enumerate(found):
        files = sorted(p for p in (base / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ConfigError(f"class folder {str(base / name)!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})", "data.root")
        for f in files:
            img = _read_image(f, flag, hw)
            if img is None:
                if not skip_corrupt:
                    raise ConfigError(
                        f"cannot read image {str(f)!r} (corrupt or not an image); remove it or set "
                        "data.dataset_args.skip_corrupt: true", "data.root"
                    )
                log.warning("skipping unreadable image %s", f)
                continue
            if images and img.shape != images[0].shape:
                raise ConfigError(
                    f"image {str(f)!r} is {img.shape[1]}x{img.shape[0]}, others {images[0].shape[1]}x{images[0].shape[0]}; "
                    "set data.dataset_args.size: [H, W] to resize all", "data.root"
                )
            images.append(img)
            labels.append(label)
    if not images:
        raise ConfigError(f"no readable images under {str(base)!r}", "data.root")
    x = np.stack(images).astype(np.float32)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return ArrayData(x, np.asarray(labels, dtype=np.int64), found, max_value=255.0)


def _read_image(path: Path, flag: int, hw: tuple[int, int] | None) -> np.ndarray | None:
    """The image as HWC RGB (or HW grey) uint8, resized to ``hw``; None if unreadable."""
    import cv2

    # imdecode instead of imread: same decoders, no stderr noise, non-ASCII paths work
    img = cv2.imdecode(np.fromfile(path, dtype=np.uint8), flag)
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
