"""Normalization by name (``model.norm``): layers for the architectures, swapping, SyncBatchNorm.

A recipe gives ``norm: batch`` or ``norm: {name: group, groups: 8}``. ``weight`` is not a
layer but the weight-norm parametrization (Salimans & Kingma 2016) of every linear and conv
layer, applied after the init scheme so the initial weights are what the scheme drew.
"""

from __future__ import annotations

from typing import Any, Union

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrizations, parametrize

from trainkit.errors import ConfigError
from trainkit.registry import Registry

NormSpec = Union[str, dict[str, Any]]
KEY = "model.norm"
NORMS: Registry = Registry("norm")


@NORMS.register("none")
def none_(channels: int, spatial: bool) -> nn.Module:
    """no normalization"""
    return nn.Identity()


@NORMS.register("batch")
def batch(channels: int, spatial: bool, momentum: float = 0.1, eps: float = 1e-5) -> nn.Module:
    """batch norm (Ioffe & Szegedy 2015); SyncBatchNorm when more than one process trains"""
    return (nn.BatchNorm2d if spatial else nn.BatchNorm1d)(channels, eps=eps, momentum=momentum)


@NORMS.register("layer")
def layer(channels: int, spatial: bool, eps: float = 1e-5) -> nn.Module:
    """layer norm (Ba et al. 2016): over all features (C, H, W) of each sample"""
    # GroupNorm with one group normalizes over (C, H, W) with per-channel affine, which is what
    # layer norm means for conv features; for vectors it is nn.LayerNorm.
    return nn.GroupNorm(1, channels, eps=eps) if spatial else nn.LayerNorm(channels, eps=eps)


def _groups_for(channels: int, groups: int) -> int:
    """The largest divisor of ``channels`` that is at most ``groups`` (GroupNorm needs a divisor)."""
    return max(g for g in range(1, min(groups, channels) + 1) if channels % g == 0)


@NORMS.register("group")
def group(channels: int, spatial: bool, groups: int = 32, eps: float = 1e-5) -> nn.Module:
    """group norm (Wu & He 2018) with `groups` groups (largest divisor of the channels <= groups)"""
    if groups < 1:
        raise ConfigError(f"groups must be >= 1, got {groups}", f"{KEY}.groups")
    return nn.GroupNorm(_groups_for(channels, groups), channels, eps=eps)


@NORMS.register("instance")
def instance(channels: int, spatial: bool, eps: float = 1e-5) -> nn.Module:
    """instance norm (Ulyanov et al. 2016): each channel of each sample over H, W (images only)"""
    if not spatial:
        raise ConfigError("instance norm needs image features (C, H, W); use layer or batch for vectors", KEY)
    return nn.GroupNorm(channels, channels, eps=eps)


@NORMS.register("weight")
def weight(channels: int, spatial: bool) -> nn.Module:
    """weight norm (Salimans & Kingma 2016): w = g * v / ||v|| on every linear and conv layer"""
    return nn.Identity()  # the parametrization is applied to the layers by apply_weight_norm


def split_spec(spec: NormSpec) -> tuple[str, dict[str, Any]]:
    """``(name, keyword arguments)`` of a norm spec, validated.

    Raises:
        ConfigError: no or unknown name, or an argument the norm does not take.
    """
    return NORMS.split_spec(spec, KEY, skip=("channels", "spatial"))


def make_norm(spec: NormSpec, channels: int, spatial: bool) -> nn.Module:
    """A norm layer over ``channels`` features (``spatial``: conv features N, C, H, W)."""
    name, kwargs = split_spec(spec)
    return NORMS.get(name)(channels, spatial, **kwargs)


NORM_TYPES = (_BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def is_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a normalization layer (its parameters are scales and shifts)."""
    return isinstance(module, NORM_TYPES) or "norm" in type(module).__name__.lower()


def swap_norms(model: nn.Module, spec: NormSpec) -> nn.Module:
    """Replace every batch/group/layer norm of ``model`` by the norm ``spec`` names (in place).

    For architectures that do not take a ``norm`` argument (adapters, user classes). Only
    plain ``BatchNorm1d/2d`` and ``GroupNorm`` layers are swapped.
    """
    name, _ = split_spec(spec)
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            # exact types only: subclasses such as timm's BatchNormAct2d also hold an activation
            if type(child) in (nn.BatchNorm1d, nn.BatchNorm2d):
                channels, spatial = child.num_features, type(child) is nn.BatchNorm2d
            elif type(child) is nn.GroupNorm:
                channels, spatial = child.num_channels, True
            else:
                continue
            setattr(parent, child_name, make_norm(spec, channels, spatial))
    if name == "weight":
        apply_weight_norm(model)
    return model


def apply_weight_norm(model: nn.Module) -> nn.Module:
    """Weight-norm parametrization on every linear and conv layer (in place)."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) and not parametrize.is_parametrized(module, "weight"):
            parametrizations.weight_norm(module, "weight", dim=0)
    return model


def conv_bias(spec: NormSpec) -> bool:
    """Whether a conv followed by this norm needs its own bias (a norm's shift makes it redundant)."""
    return split_spec(spec)[0] in ("none", "weight")


def uses_weight_norm(spec: NormSpec | None) -> bool:
    return spec is not None and split_spec(spec)[0] == "weight"


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` has a batch norm that is not synchronized yet."""
    from trainkit.nn.syncbn import CPUSyncBatchNorm

    return any(isinstance(m, _BatchNorm) and not isinstance(m, (nn.SyncBatchNorm, CPUSyncBatchNorm))
               for m in model.modules())


def sync_batchnorm(model: nn.Module, world_size: int, enabled: bool | None, device_type: str = "cpu") -> nn.Module:
    """Batch norm layers of ``model`` synchronized across processes when more than one trains.

    ``enabled``: ``None`` decides automatically (world size > 1 and batch norm present),
    ``True``/``False`` force it. On GPUs this is Lightning's layer-sync plugin (the mechanism
    behind ``Trainer(sync_batchnorm=True)``, torch's SyncBatchNorm); on the CPU, where torch's
    cannot run, trainkit's :class:`~trainkit.nn.syncbn.CPUSyncBatchNorm`.
    """
    from lightning.pytorch.plugins import TorchSyncBatchNorm

    from trainkit.nn.syncbn import convert_cpu_sync_batchnorm

    if enabled is None:
        enabled = world_size > 1
    if not (enabled and has_batchnorm(model)):
        return model
    if device_type == "cpu":
        return convert_cpu_sync_batchnorm(model)
    return TorchSyncBatchNorm().apply(model)
