"""A user's own dataset: ``data.dataset: my_pkg.data.Pets`` (a class path), ``data.dataset_args`` its kwargs.

The class path is imported with :func:`trainkit.registry.import_object` (the current
directory first). Calling it with ``data.dataset_args`` must give a map-style torch Dataset
(``__len__``, ``__getitem__``) whose items are ``(input, label)`` and which carries, in
torchvision's convention, ``targets`` (the label of every index, read up front for the
splits) and ``classes`` (the class names): ``torchvision.datasets.ImageFolder``,
``CIFAR10`` and friends work as they are. Inputs may be images (a PIL image, an HWC or HW
uint8 array, a CHW uint8 tensor), read and augmented per sample in the DataLoader workers like
an image folder's, or float arrays/tensors of one shape (tables, pre-processed images), used as
they are. Every input must have one shape (resize in the dataset, or use a pipeline that ends
in a fixed size). What the object lacks is refused with exit 2 naming it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trainkit.errors import ConfigError
from trainkit.registry import check_kwargs, import_object

KEY = "data.dataset"


def is_class_path(name: str) -> bool:
    """A ``data.dataset`` value that names a class path rather than a registry entry."""
    return isinstance(name, str) and "." in name.strip(".")


def to_array(x: Any) -> np.ndarray:
    """An input as a NumPy array: images HWC/HW uint8 (CHW tensors transposed), others as they are."""
    if hasattr(x, "mode") and hasattr(x, "size") and hasattr(x, "convert"):  # a PIL image
        x = np.asarray(x.convert("RGB") if x.mode not in ("L", "RGB") else x)
    elif hasattr(x, "numpy") and hasattr(x, "dim"):  # a torch tensor
        x = x.detach().cpu()
        x = x.permute(1, 2, 0).numpy() if str(x.dtype) == "torch.uint8" and x.dim() == 3 else x.numpy()
    return np.asarray(x)


class UserData:
    """A file-kind source over a user's Dataset (see the module docstring)."""

    kind = "files"
    test = None

    def __init__(self, dataset: Any, name: str):
        self.dataset, self.name = dataset, name
        for attr in ("__len__", "__getitem__"):
            if not hasattr(dataset, attr):
                raise ConfigError(f"{name} gave a {type(dataset).__name__}, not a map-style Dataset (it has no {attr})", KEY)
        missing = [a for a in ("targets", "classes") if not hasattr(dataset, a)]
        if missing:
            raise ConfigError(
                f"{name}: the dataset has no {' or '.join(repr(m) for m in missing)} attribute: give it `targets` "
                "(the label of every index) and `classes` (the class names), as torchvision datasets do", KEY
            )
        self.y = np.asarray([int(t) for t in dataset.targets], dtype=np.int64)
        self.classes = tuple(str(c) for c in dataset.classes)
        if len(self.y) != len(dataset):
            raise ConfigError(f"{name}: {len(dataset)} samples but {len(self.y)} targets", KEY)
        if not len(self.y):
            raise ConfigError(f"{name}: the dataset is empty", KEY)
        first = self._item(0)
        self.is_image = first.dtype == np.uint8 and first.ndim in (2, 3)
        self.max_value = 255.0 if self.is_image else 1.0
        if self.is_image:
            hwc = first if first.ndim == 3 else first[..., None]
            self.sample_shape = (hwc.shape[2], hwc.shape[0], hwc.shape[1])
        else:
            self.sample_shape = tuple(first.shape)

    def _item(self, i: int) -> np.ndarray:
        try:
            item = self.dataset[i]
        except Exception as e:  # noqa: BLE001  (the user's code)
            raise ConfigError(f"{self.name}: reading sample {i} failed: {type(e).__name__}: {e}", KEY) from None
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise ConfigError(f"{self.name}: sample {i} is a {type(item).__name__}, not an (input, label) pair", KEY)
        return to_array(item[0])

    def read(self, i: int) -> np.ndarray:
        """Input ``i`` (in a worker): an HWC/HW uint8 image or a float array."""
        x = to_array(self.dataset[i][0])
        return x if self.is_image else np.asarray(x, np.float32)

    def describe(self, i: int) -> str:
        return f"{self.name}[{i}]"


def load_user_dataset(path: str, kwargs: dict[str, Any]) -> UserData:
    """Import ``path``, call it with ``kwargs``, check what it returned.

    Raises:
        ConfigError: cannot import, not callable, wrong kwargs, the call fails, or the object
            lacks ``__len__``/``__getitem__``/``targets``/``classes``.
    """
    factory = import_object(path, KEY)
    if not callable(factory):
        raise ConfigError(f"{path!r} is a {type(factory).__name__}, not a class or function returning a Dataset", KEY)
    try:
        check_kwargs(factory, kwargs, path)
    except ConfigError as e:
        raise e.with_key("data.dataset_args") from None
    except (TypeError, ValueError):  # no inspectable signature (a builtin): let the call tell
        pass
    try:
        dataset = factory(**kwargs)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001  (the user's code: name it, no traceback)
        raise ConfigError(f"{path}(**data.dataset_args) failed: {type(e).__name__}: {e}", KEY) from None
    return UserData(dataset, path)
