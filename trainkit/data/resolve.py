"""``data.dataset`` resolved: a registry name or a user's class path, its arguments checked."""

from __future__ import annotations

import inspect
from typing import Any, Callable

from trainkit.arguments import check_types
from trainkit.data.datasets import DATASETS
from trainkit.data.user import is_class_path, load_user_dataset
from trainkit.errors import ConfigError
from trainkit.registry import check_kwargs


def source_loader(dataset: str, dataset_args: dict[str, Any] | None, root: str | None, download: bool) -> Callable[[], Any]:
    """A function that loads the source ``data.dataset`` names, its arguments checked now.

    Raises:
        ConfigError: an unknown name, an argument the dataset does not take, ``root`` or
            ``download`` for a dataset without them.
    """
    load_args = dict(dataset_args or {})
    if dataset not in DATASETS and is_class_path(dataset):
        for key, value in (("data.root", root), ("data.download", download)):
            if value not in (None, False):
                raise ConfigError(f"a class-path dataset takes its own arguments in data.dataset_args, not {key}", key)
        return lambda: load_user_dataset(dataset, load_args)
    try:
        loader = DATASETS.get(dataset)
    except ConfigError as e:
        raise ConfigError(f"{e} (or the class path of your own Dataset, my_pkg.data.Pets)", "data.dataset") from None
    try:
        check_kwargs(loader, load_args, f"dataset {dataset!r}", skip=("root", "download"))
        check_types(loader, load_args, "data.dataset_args")
    except ConfigError as e:
        raise e.with_key("data.dataset_args") from None
    for key, value in (("root", root), ("download", download)):
        if value not in (None, False):
            users = [n for n in DATASETS.names() if key in inspect.signature(DATASETS.get(n)).parameters]
            if dataset not in users:
                raise ConfigError(f"dataset {dataset!r} takes no {key} (datasets that do: {', '.join(users)})", f"data.{key}")
            load_args[key] = value
    return lambda: loader(**load_args)

