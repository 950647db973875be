"""Adapters for other libraries' models: ``arch: timm:<name>`` and ``arch: torchvision:<name>``.

Both need the ``vision`` extra (README: installing on CPU-only machines); they are imported
only when a recipe names them. ``arch_args`` are passed to the library's model factory, except
``pretrained``:

- ``false`` (default): random init;
- ``true``: the library's pretrained weights from the local cache only (timm: the Hugging Face
  hub cache, ``$HF_HUB_CACHE`` or ``~/.cache/huggingface/hub``; torchvision and timm's older
  models: the torch hub cache, ``$TORCH_HOME/hub/checkpoints``); never downloaded;
- ``download``: the same weights, downloaded into that cache if absent;
- a file path: a state dict (``.pth``/``.pt``/``.bin``, or ``.safetensors``) of that model.

Weights load by name and shape into the model built for the recipe's classes and channels:
the classifier head keeps its init when the class count differs, a first convolution trained
on RGB is summed over its channels for one-channel inputs, and at least half of the model's
tensors must come from the file. trainkit's ``norm`` and ``dropout`` are applied afterwards
(``trainkit.models.build_arch``); ``model.init`` would re-draw the weights and is refused.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainkit.errors import ConfigError
from trainkit.models import ARCHS
from trainkit.optional import optional_import

log = logging.getLogger(__name__)
KEY = "model.arch_args.pretrained"


def _import(module: str) -> Any:
    return optional_import(module, "model.arch")


def _first_conv_for(model: nn.Module, channels: int) -> None:
    """Rebuild the first conv for ``channels`` input channels (torchvision models assume RGB)."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels != channels:
                    setattr(parent, name, nn.Conv2d(channels, child.out_channels, child.kernel_size, child.stride,
                                                    child.padding, child.dilation, child.groups, child.bias is not None))
                return


def check_pretrained(value: Any) -> Any:
    """``false | true | download | PATH``.

    Raises:
        ConfigError: any other value.
    """
    if value in (None, False, True, "download") or (isinstance(value, str) and value):
        return value
    raise ConfigError(f"must be false, true (the local cache), download, or a weights file; got {value!r}", KEY)


@ARCHS.register("timm")
def timm_model(num_classes: int, input_shape: tuple[int, ...], model_name: str, pretrained: Any = False, **kwargs: Any) -> nn.Module:
    """timm:<name>: any timm model, random or pretrained (arch_args.pretrained; needs the vision extra)"""
    pretrained = check_pretrained(pretrained)
    timm = _import("timm")
    if model_name not in timm.list_models():
        close = timm.list_models(f"*{model_name}*")[:5]
        raise ConfigError(f"unknown timm model {model_name!r}" + (f" (similar: {', '.join(close)})" if close else ""),
                          "model.arch")
    in_chans = input_shape[0] if len(input_shape) == 3 else 1
    model = timm.create_model(model_name, pretrained=pretrained == "download", num_classes=num_classes,
                              in_chans=in_chans, **kwargs)
    if pretrained and pretrained != "download":
        path = Path(pretrained) if pretrained is not True else timm_cached_file(timm, model_name)
        load_pretrained(model, path, f"timm:{model_name}")
    return model


@ARCHS.register("torchvision")
def torchvision_model(num_classes: int, input_shape: tuple[int, ...], model_name: str, pretrained: Any = False,
                      **kwargs: Any) -> nn.Module:
    """torchvision:<name>: any torchvision classification model, random or pretrained (arch_args.pretrained; vision extra)"""
    pretrained = check_pretrained(pretrained)
    models = _import("torchvision.models")
    known = models.list_models(module=models)
    if model_name not in known:
        raise ConfigError(f"unknown torchvision model {model_name!r} (known: {', '.join(known)})", "model.arch")
    model = models.get_model(model_name, weights=None, num_classes=num_classes, **kwargs)
    if len(input_shape) == 3 and input_shape[0] != 3:
        _first_conv_for(model, input_shape[0])
    if pretrained:
        weights = models.get_model_weights(model_name).DEFAULT
        if pretrained == "download":
            state = weights.get_state_dict(progress=False)  # into the torch hub cache
            load_state(model, state, f"torchvision:{model_name}", weights.url)
        else:
            path = Path(pretrained) if pretrained is not True else torch_hub_file(weights.url, f"torchvision:{model_name}")
            load_pretrained(model, path, f"torchvision:{model_name}")
    return model


# -- where pretrained weights are cached ----------------------------------------------------
def hf_hub_cache() -> Path:
    """The Hugging Face hub cache: ``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub"


def hf_cached_file(repo_id: str, filenames: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")) -> Path | None:
    """A file of ``repo_id`` in the local hub cache (its ``main`` snapshot), without a network call.

    The cache layout: ``models--<org>--<name>/refs/main`` holds the snapshot's commit,
    ``snapshots/<commit>/<file>`` the file.
    """
    repo = hf_hub_cache() / ("models--" + repo_id.replace("/", "--"))
    ref = repo / "refs" / "main"
    commits = [ref.read_text().strip()] if ref.is_file() else sorted(p.name for p in (repo / "snapshots").glob("*"))
    for commit in commits:
        for name in filenames:
            if (repo / "snapshots" / commit / name).is_file():
                return repo / "snapshots" / commit / name
    return None


def torch_hub_file(url: str, arch: str) -> Path:
    """The torch hub cache's copy of ``url`` (``$TORCH_HOME/hub/checkpoints/<file>``).

    Raises:
        ConfigError: not in the cache; nothing is downloaded unless the recipe says so.
    """
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not path.is_file():
        raise ConfigError(
            f"{arch}: pretrained weights {path.name} are not in the local torch hub cache ({path.parent}); "
            f"trainkit never downloads unless asked: set arch_args.pretrained: download once, or give a file path",
            KEY)
    return path


def timm_cached_file(timm: Any, model_name: str) -> Path:
    """The cached pretrained file of a timm model (Hugging Face hub, else torch hub for older ones).

    Raises:
        ConfigError: not cached.
    """
    cfg = timm.models.get_pretrained_cfg(model_name)
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        found = hf_cached_file(hub_id)
        if found is None:
            raise ConfigError(
                f"timm:{model_name}: pretrained weights of {hub_id} are not in the local Hugging Face cache "
                f"({hf_hub_cache()}); trainkit never downloads unless asked: set arch_args.pretrained: download "
                f"once, or give a file path", KEY)
        return found
    url = getattr(cfg, "url", None)
    if not url:
        raise ConfigError(f"timm:{model_name} has no pretrained weights; give a file path", KEY)
    return torch_hub_file(url, f"timm:{model_name}")


# -- loading them ---------------------------------------------------------------------------
def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, loaded safely (``weights_only``; safetensors as they are).

    Raises:
        ConfigError: missing, unreadable, or holding anything other than tensors and plain data.
    """
    if not path.is_file():
        raise ConfigError(f"weights file {str(path)!r} does not exist", KEY)
    try:
        if path.suffix == ".safetensors":
            state: Any = optional_import("safetensors.torch", KEY).load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001  (torch and safetensors raise several types for bad files)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            reason = "it holds objects other than tensors and plain data (refused: loading would run its code)"
        raise ConfigError(f"cannot load weights from {str(path)!r}: {reason}", KEY) from None
    for nested in ("state_dict", "model", "model_state_dict"):  # training checkpoints nest the weights
        if isinstance(state, dict) and isinstance(state.get(nested), dict):
            state = state[nested]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{str(path)!r} holds no state dict of tensors", KEY)
    return state


def load_pretrained(model: nn.Module, path: Path, arch: str) -> None:
    """Load the weights file at ``path`` into ``model`` (see the module docstring)."""
    load_state(model, read_state(Path(path).expanduser()), arch, str(path))


def load_state(model: nn.Module, state: dict[str, torch.Tensor], arch: str, source: str) -> None:
    """Load ``state`` by name and shape; adapt RGB first convolutions; log what stayed at init.

    Raises:
        ConfigError: fewer than half of the model's tensors found in ``state``.
    """
    for prefix in ("module.", "net."):  # DDP wrappers, trainkit's Classifier
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    own = model.state_dict()
    fits: dict[str, torch.Tensor] = {}
    for key, mine in own.items():
        theirs = state.get(key)
        if theirs is None:
            continue
        if theirs.shape == mine.shape:
            fits[key] = theirs
        elif mine.dim() == 4 and theirs.dim() == 4 and mine.shape[0] == theirs.shape[0] and mine.shape[2:] == theirs.shape[2:]:
            fits[key] = adapt_input_conv(theirs, mine.shape[1])
    if len(fits) * 2 < len(own):
        raise ConfigError(
            f"{source!r} does not hold weights of {arch}: {len(fits)} of its model's {len(own)} tensors found by name and "
            f"shape (the file has e.g. {', '.join(list(state)[:3])}; the model {', '.join(list(own)[:3])})", KEY)
    model.load_state_dict(fits, strict=False)
    fresh = [k for k in own if k not in fits]
    log.info("%s: pretrained weights from %s, %d of %d tensors%s", arch, source, len(fits), len(own),
             f"; kept at init: {', '.join(fresh[:4])}{' ...' if len(fresh) > 4 else ''}" if fresh else "")


def adapt_input_conv(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A first convolution's weights trained on ``weight.shape[1]`` input channels, for
    ``channels`` (as timm's ``adapt_input_conv``): summed for one channel, else repeated and
    scaled so that the response to a gray image is kept.

    >>> w = torch.ones(2, 3, 1, 1)
    >>> adapt_input_conv(w, 1).flatten().tolist(), adapt_input_conv(w, 6).sum().item()
    ([3.0, 3.0], 6.0)
    """
    if channels == 1:
        return weight.sum(1, keepdim=True)
    reps = -(-channels // weight.shape[1])
    return weight.repeat(1, reps, 1, 1)[:, :channels] * (weight.shape[1] / channels)


def import_class(path: str) -> Any:
    """The object at ``package.module.Name`` (a user's own architecture by class path)."""
    from trainkit.registry import import_object

    obj = import_object(path, "model.arch")
    if not callable(obj):
        raise ConfigError(f"{path!r} is not a class or factory", "model.arch")
    return obj
