"""Architectures, one file per family, each registered in :data:`ARCHS` by name.

An architecture entry is a factory ``build(num_classes, input_shape, **arch_args)`` returning
an ``nn.Module`` that maps a batch of inputs to class logits; factories that also take
``activation``, ``norm`` or ``dropout`` get the recipe's ``model.*`` values. ``arch`` may also
be ``timm:<name>``, ``torchvision:<name>`` or a user's class path ``package.module.Class``.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from trainkit.arguments import call_checked, check_types
from trainkit.errors import ConfigError
from trainkit.registry import Registry, check_kwargs

ARCHS: Registry = Registry("architecture")

from trainkit.models import adapters, cnn, mlp, resnet  # noqa: E402,F401  (register their entries)

BUILT_IN = ("num_classes", "input_shape", "activation", "norm", "dropout")


def resolve_arch(name: str) -> tuple[Any, dict[str, Any]]:
    """The factory for ``model.arch`` and the arguments its name implies (``model_name``)."""
    family, sep, sub = name.partition(":")
    if sep and family in ("timm", "torchvision"):
        return ARCHS.get(family), {"model_name": sub}
    if name not in ARCHS and "." in name:
        return adapters.import_class(name), {}
    try:
        return ARCHS.get(name), {}
    except ConfigError as e:
        raise e.with_key("model.arch") from None


def build_arch(
    name: str,
    num_classes: int,
    input_shape: tuple[int, ...],
    activation: Any,
    arch_args: dict[str, Any] | None,
    norm: Any = None,
    dropout: float | None = None,
) -> nn.Module:
    """Build architecture ``name`` with the recipe's ``arch_args``, activation, norm and dropout.

    ``norm``/``dropout`` of ``None`` keep the architecture's defaults. Architectures that do
    not take them (adapters, user classes) get their norm layers swapped and their dropout
    rates overridden after they are built.

    Raises:
        ConfigError: unknown name (``model.arch``) or an argument it does not take (``model.arch_args``).
    """
    from trainkit.nn.norm import swap_norms
    from trainkit.nn.regularize import set_dropout

    factory, implied = resolve_arch(name)
    user = dict(arch_args or {})
    try:
        check_kwargs(factory, {**implied, **user}, f"architecture {name!r}", skip=BUILT_IN)
        check_types(factory, user, "model.arch_args")
    except ConfigError as e:
        raise e.with_key("model.arch_args") from None
    accepted = inspect.signature(factory).parameters
    given = {"num_classes": num_classes, "input_shape": tuple(input_shape), "activation": activation, "norm": norm,
             "dropout": dropout}
    fixed = {**implied, **{k: v for k, v in given.items() if k in accepted and v is not None}}
    # a value the architecture refuses (ValueError, ...) is bad input naming model.arch_args.<key>
    net = call_checked(factory, user, "model.arch_args", f"architecture {name!r}", fixed=fixed)
    if not isinstance(net, nn.Module):
        raise ConfigError(f"{name!r} built a {type(net).__name__}, not a torch.nn.Module", "model.arch")
    if norm is not None and "norm" not in accepted:
        swap_norms(net, norm)
    if dropout is not None and "dropout" not in accepted:
        set_dropout(net, dropout)
    return net
