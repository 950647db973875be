"""Adapters for other libraries' models: ``arch: timm:<name>`` and ``arch: torchvision:<name>``.

Both need the ``vision`` extra (``pip install 'trainkit[vision]'``); they are imported only
when a recipe names them. ``arch_args`` are passed to the library's model factory. trainkit's
``norm``, ``dropout`` and ``init`` are applied to the built model afterwards (norm layers
swapped, dropout rates overridden, weights re-drawn), see ``trainkit.models.build_arch``.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from trainkit.errors import ConfigError
from trainkit.models import ARCHS


def _import(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"{module} models need the 'vision' extra: pip install 'trainkit[vision]'", "model.arch"
        ) from None


def _first_conv_for(model: nn.Module, channels: int) -> None:
    """Rebuild the first conv for ``channels`` input channels (torchvision models assume RGB)."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels != channels:
                    setattr(parent, name, nn.Conv2d(channels, child.out_channels, child.kernel_size, child.stride,
                                                    child.padding, child.dilation, child.groups, child.bias is not None))
                return


@ARCHS.register("timm")
def timm_model(num_classes: int, input_shape: tuple[int, ...], model_name: str, **kwargs: Any) -> nn.Module:
    """timm:<name>: any timm model, randomly initialized (needs the vision extra)"""
    timm = _import("timm")
    if model_name not in timm.list_models():
        close = timm.list_models(f"*{model_name}*")[:5]
        raise ConfigError(f"unknown timm model {model_name!r}" + (f" (similar: {', '.join(close)})" if close else ""),
                          "model.arch")
    in_chans = input_shape[0] if len(input_shape) == 3 else 1
    return timm.create_model(model_name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)


@ARCHS.register("torchvision")
def torchvision_model(num_classes: int, input_shape: tuple[int, ...], model_name: str, **kwargs: Any) -> nn.Module:
    """torchvision:<name>: any torchvision classification model, randomly initialized (needs the vision extra)"""
    models = _import("torchvision.models")
    known = models.list_models(module=models)
    if model_name not in known:
        raise ConfigError(f"unknown torchvision model {model_name!r} (known: {', '.join(known)})", "model.arch")
    model = models.get_model(model_name, weights=None, num_classes=num_classes, **kwargs)
    if len(input_shape) == 3 and input_shape[0] != 3:
        _first_conv_for(model, input_shape[0])
    return model


def import_class(path: str) -> Any:
    """The object at ``package.module.Name`` (a user's own architecture by class path)."""
    from trainkit.registry import import_object

    obj = import_object(path, "model.arch")
    if not callable(obj):
        raise ConfigError(f"{path!r} is not a class or factory", "model.arch")
    return obj
