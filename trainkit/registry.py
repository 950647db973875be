"""One small registry for everything swappable by name (architectures, datasets, optimizers,
schedules, init schemes, ...), in the spirit of timm's ``list_models``/``create_model``.

>>> r = Registry("schedule")
>>> @r.register("cosine")
... def cosine(step):
...     '''Half a cosine from the peak lr down to zero.'''
...     return step
>>> r.names()
['cosine']
>>> r.get("cosin")
Traceback (most recent call last):
...
trainkit.errors.ConfigError: unknown schedule 'cosin'; did you mean 'cosine'? (known: cosine)
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
import os
import sys
from typing import Any, Callable, Generic, TypeVar

from trainkit.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps lowercase names to objects (classes or factories) of one kind.

    Args:
        kind: what the entries are, singular ("architecture"); it appears in error messages.
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._descriptions: dict[str, str] = {}

    def register(self, name: str, obj: T | None = None, *, description: str | None = None) -> Any:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator.

        The description defaults to the first line of the object's docstring.

        Raises:
            ValueError: the name is taken or not lowercase (a programming error, not user input).
        """

        def add(o: T) -> T:
            if name != name.lower() or not name:
                raise ValueError(f"{self.kind} names are lowercase and non-empty, got {name!r}")
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = o
            doc = description if description is not None else inspect.getdoc(o) or ""
            self._descriptions[name] = doc.strip().splitlines()[0] if doc.strip() else ""
            return o

        return add if obj is None else add(obj)

    def get(self, name: str) -> T:
        """The entry named ``name``.

        Raises:
            ConfigError: unknown name; the message lists close matches and all known names.
        """
        if not isinstance(name, str) or name not in self._entries:
            raise ConfigError(self.unknown_message(name))
        return self._entries[name]

    def resolve(self, name: Any, key: str, base: type | None = None) -> T:
        """The entry ``name`` or, when ``base`` is given, a subclass of ``base`` by class path.

        A dotted name that is not registered (``torch.optim.Adamax``, ``my_pkg.act.Swish``) is
        imported with :func:`import_object` (current directory first) and must subclass ``base``.

        Raises:
            ConfigError: an unknown name, or a class path that cannot be imported or is not a
                ``base``; attributed to ``key``.
        """
        what = _public_name(base) if base is not None else ""
        if base is not None and isinstance(name, str) and name not in self._entries and "." in name:
            obj = import_object(name, key)
            if not (isinstance(obj, type) and issubclass(obj, base)):
                raise ConfigError(f"{name!r} is not a {what} subclass", key)
            return obj  # type: ignore[return-value]
        try:
            return self.get(name)
        except ConfigError as e:
            raise ConfigError(f"{e}{f' (or the class path of a {what})' if what else ''}", key) from None

    def split_spec(self, spec: Any, key: str, skip: tuple[str, ...] = (), base: type | None = None) -> tuple[str, dict[str, Any]]:
        """``(name, keyword arguments)`` of a recipe spec: a name, or ``{name: ..., <arguments>}``.

        Args:
            spec: the recipe value.
            key: the recipe key, for error messages.
            skip: arguments trainkit fills in itself (invalid from recipes).
            base: also accept a subclass of this by class path (see :meth:`resolve`).

        Raises:
            ConfigError: no or unknown name, or an argument the entry does not take.
        """
        if isinstance(spec, str):
            name, kwargs = spec, {}
        elif isinstance(spec, dict) and "name" in spec:
            name, kwargs = spec["name"], {k: v for k, v in spec.items() if k != "name"}
        else:
            raise ConfigError(f"a name or {{name: ..., <arguments>}}, got {spec!r}", key)
        try:
            check_kwargs(self.resolve(name, key, base), kwargs, f"{self.kind} {name!r}", skip=skip)
        except ConfigError as e:
            raise e.with_key(key) from None
        return name, kwargs

    def unknown_message(self, name: Any) -> str:
        known = self.names()
        close = difflib.get_close_matches(str(name), known, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} {name!r}{hint} (known: {', '.join(known)})"

    def describe(self, name: str) -> str:
        """One-line description of an entry."""
        self.get(name)
        return self._descriptions[name]

    def names(self, pattern: str | None = None) -> list[str]:
        """Sorted registered names, optionally filtered by a glob (``resnet*``)."""
        names = sorted(self._entries)
        return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)


def _public_name(cls: type) -> str:
    """``torch.nn.Module``, not ``torch.nn.modules.module.Module``: the shortest import path.

    >>> import torch
    >>> _public_name(torch.nn.Module)
    'torch.nn.Module'
    """
    parts = cls.__module__.split(".")
    for i in range(1, len(parts) + 1):
        module = sys.modules.get(".".join(parts[:i]))
        if module is not None and getattr(module, cls.__qualname__, None) is cls:
            return f"{'.'.join(parts[:i])}.{cls.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def check_kwargs(fn: Callable[..., Any], kwargs: dict[str, Any], what: str, skip: tuple[str, ...] = ()) -> None:
    """Raise a :class:`ConfigError` if ``kwargs`` has a key that ``fn`` does not accept.

    Args:
        fn: the function or class whose signature defines the valid keys.
        kwargs: the user's keyword arguments.
        what: how to name the thing in the message ("optimizer 'sgd'").
        skip: parameters that trainkit fills in itself (e.g. ``params``), invalid from users.
    """
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n, p in params.items() if n not in skip and p.kind is not inspect.Parameter.VAR_POSITIONAL]
    for key in kwargs:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{what} has no argument {key!r}{hint} (valid: {', '.join(valid)})")


def import_from_cwd() -> str:
    """Put the current directory first on ``sys.path``, as ``python -m`` does; returns it.

    The ``trainkit`` console script starts with its own directory there instead, so without
    this a user's ``my_pkg/`` beside the recipe would need ``PYTHONPATH=.``. The CLI calls it
    before parsing, so class paths that jsonargparse imports (``trainer.callbacks``,
    ``trainer.logger``) resolve the same way as trainkit's own.
    """
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    return cwd


def import_object(path: str, key: str) -> Any:
    """The object at a class path ``package.module.Name``, imported as ``python -m`` would.

    The current directory comes first on ``sys.path`` (as for ``python -m``), so a user's
    ``my_pkg/data.py`` beside the recipe imports without setting ``PYTHONPATH``. Every recipe
    key that takes a class path (architectures, datasets, optimizers, activations) uses this.

    Args:
        path: the dotted path.
        key: the recipe key, for error messages.

    Raises:
        ConfigError: not a dotted path, or the module or the name cannot be imported; the
            message names the path, the key and where it looked.

    >>> import_object("collections.OrderedDict", "model.arch").__name__
    'OrderedDict'
    >>> import_object("collections.NoSuchThing", "model.arch")
    Traceback (most recent call last):
    ...
    trainkit.errors.ConfigError: model.arch: cannot import 'collections.NoSuchThing': module 'collections' has no attribute 'NoSuchThing'
    """
    module_name, _, attr = path.rpartition(".") if isinstance(path, str) else ("", "", "")
    if not module_name or not attr:
        raise ConfigError(f"a class path is package.module.Name, got {path!r}", key)
    cwd = import_from_cwd()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):  # the module itself, not one it imports
            raise ConfigError(
                f"cannot import {path!r}: no module {e.name!r} in the current directory ({cwd}) "
                "or the installed packages", key
            ) from None
        raise ConfigError(f"cannot import {path!r}: importing {module_name} failed: {e}", key) from None
    except Exception as e:  # a user's module that fails while importing: name it, no traceback
        raise ConfigError(f"cannot import {path!r}: importing {module_name} failed: {type(e).__name__}: {e}", key) from None
    try:
        return getattr(module, attr)
    except AttributeError as e:
        raise ConfigError(f"cannot import {path!r}: {e}", key) from None
