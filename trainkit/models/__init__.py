"""Architectures, one file per family, each registered in :data:`ARCHS` by name.

An architecture entry is a factory ``build(num_classes, input_shape, activation, **arch_args)``
returning an ``nn.Module`` that maps a batch of inputs to class logits.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from trainkit.errors import ConfigError
from trainkit.registry import Registry, check_kwargs

ARCHS: Registry = Registry("architecture")

from trainkit.models import mlp  # noqa: E402,F401  (registers its entries)


def build_arch(
    name: str, num_classes: int, input_shape: tuple[int, ...], activation: str, arch_args: dict[str, Any] | None
) -> nn.Module:
    """Build architecture ``name`` with the recipe's ``arch_args``.

    Raises:
        ConfigError: unknown name (``model.arch``) or an argument it does not take (``model.arch_args``).
    """
    try:
        factory = ARCHS.get(name)
    except ConfigError as e:
        raise e.with_key("model.arch") from None
    args = dict(arch_args or {})
    try:
        check_kwargs(factory, args, f"architecture {name!r}", skip=("num_classes", "input_shape", "activation"))
    except ConfigError as e:
        raise e.with_key("model.arch_args") from None
    return factory(num_classes=num_classes, input_shape=tuple(input_shape), activation=activation, **args)
