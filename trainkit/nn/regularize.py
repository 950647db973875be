"""Weight decay parameter groups, coupled or decoupled decay, and L1/L2 (elastic-net) penalties.

``model.regularization`` (all optional)::

    regularization:
      no_decay_bias_norm: true     # biases, norm scales/shifts (and 1-d params) get no decay
      weight_decay_mode: optimizer # optimizer (its own rule) | coupled | decoupled
      l1: 0.0                      # loss += l1 * sum |w|          (logged in train/penalty)
      l2: 0.0                      # loss += l2 / 2 * sum w^2      (both: elastic net)

The decay strength is the optimizer's ``weight_decay`` (``model.optimizer.weight_decay``).
``coupled`` adds ``wd * w`` to the gradient before the optimizer's update (SGD's and Adam's
``weight_decay``); ``decoupled`` shrinks ``w <- w * (1 - lr * wd)`` next to it (Loshchilov &
Hutter 2019, AdamW); ``optimizer`` keeps what the optimizer itself does.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from trainkit.errors import ConfigError
from trainkit.nn.norm import is_norm
from trainkit.optim.optimizers import build_optimizer, check_optimizer, optimizer_class

KEY = "model.regularization"
MODES = ("optimizer", "coupled", "decoupled")
DEFAULTS: dict[str, Any] = {"no_decay_bias_norm": True, "weight_decay_mode": "optimizer", "l1": 0.0, "l2": 0.0}


def check_regularization(spec: dict[str, Any] | None) -> dict[str, Any]:
    """The regularization spec with defaults filled in.

    Raises:
        ConfigError: unknown key, unknown mode, or a negative penalty.
    """
    spec = dict(spec or {})
    for key in spec:
        if key not in DEFAULTS:
            raise ConfigError(f"unknown key {key!r} (valid: {', '.join(DEFAULTS)})", KEY)
    out = {**DEFAULTS, **spec}
    if out["weight_decay_mode"] not in MODES:
        raise ConfigError(f"must be one of {', '.join(MODES)}, got {out['weight_decay_mode']!r}", f"{KEY}.weight_decay_mode")
    for key in ("l1", "l2"):
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"must be a number >= 0, got {value!r}", f"{KEY}.{key}")
    return out


def is_exempt(module: nn.Module, name: str, param: Tensor) -> bool:
    """Whether a parameter is a bias or a norm parameter (timm's rule: also any 1-d parameter).

    The weight-norm magnitude ``g`` counts as a norm scale.
    """
    if isinstance(module, parametrize.ParametrizationList):
        return name == "original0"
    return is_norm(module) or param.ndim <= 1 or name.endswith("bias")


def param_groups(
    model: nn.Module,
    weight_decay: float,
    no_decay_bias_norm: bool = True,
    lr_mult: Callable[[str], float] | None = None,
    lr: float | None = None,
    include_frozen: bool = False,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: decayed weights, then (if any) the exempt parameters.

    Args:
        model: the module whose trainable parameters are grouped (each appears once).
        weight_decay: decay of the first group.
        no_decay_bias_norm: put biases and norm parameters in a second group without decay;
            ``False`` gives one group with everything decayed.
        lr_mult: ``parameter name -> lr multiplier`` (discriminative lrs): each group splits by
            multiplier and gets ``lr * multiplier`` and an ``lr_mult`` entry.
        lr: the base lr the multipliers apply to (needed with ``lr_mult``).
        include_frozen: also group parameters with ``requires_grad=False`` (gradual unfreezing).

    >>> groups = param_groups(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4)), 0.1)
    >>> [(g["weight_decay"], [tuple(p.shape) for p in g["params"]]) for g in groups]
    [(0.1, [(4, 3)]), (0.0, [(4,), (4,), (4,)])]
    """
    # (exempt, lr multiplier) -> params, in first-seen order
    split: dict[tuple[bool, float], list[Tensor]] = {(False, 1.0): [], (True, 1.0): []}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if (not param.requires_grad and not include_frozen) or id(param) in seen:
                continue
            seen.add(id(param))
            mult = lr_mult(f"{module_name}.{name}" if module_name else name) if lr_mult else 1.0
            exempt = no_decay_bias_norm and is_exempt(module, name, param)
            split.setdefault((exempt, mult), []).append(param)
    groups = []
    for (exempt, mult), params in sorted(split.items(), key=lambda kv: kv[0][0]):
        group: dict[str, Any] = {"params": params, "weight_decay": 0.0 if exempt else weight_decay}
        if lr_mult is not None:
            assert lr is not None, "lr_mult needs the base lr"
            group.update(lr=lr * mult, lr_mult=mult)
        groups.append(group)
    return [g for g in groups if g["params"]]


def penalty(model: nn.Module, l1: float, l2: float, no_decay_bias_norm: bool = True) -> Tensor:
    """``l1 * sum|w| + l2 / 2 * sum w^2`` over the parameters that weight decay would decay."""
    params = param_groups(model, 1.0, no_decay_bias_norm)[0]["params"]
    total = params[0].new_zeros(()) if params else torch.zeros(())
    for p in params:
        if l1:
            total = total + l1 * p.abs().sum()
        if l2:
            total = total + 0.5 * l2 * p.pow(2).sum()
    return total


def set_dropout(model: nn.Module, rate: float) -> int:
    """Set the rate of every dropout layer of ``model`` (and timm's ``drop_rate``); returns how many.

    Raises:
        ConfigError: a rate outside [0, 1).
    """
    check_dropout(rate)
    count = 0
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = rate
            count += 1
        elif isinstance(getattr(module, "drop_rate", None), float):  # timm heads use F.dropout(drop_rate)
            module.drop_rate = rate
            count += 1
    return count


def check_dropout(rate: float | None) -> None:
    if rate is not None and not 0 <= rate < 1:
        raise ConfigError(f"must be in [0, 1), got {rate}", "model.dropout")


def _default_weight_decay(name: str) -> float:
    param = inspect.signature(optimizer_class(name)).parameters.get("weight_decay")
    return float(param.default) if param is not None and isinstance(param.default, (int, float)) else 0.0


@lru_cache(maxsize=None)
def _with_explicit_decay(cls: type, mode: str) -> type:
    """``cls`` whose step applies coupled or decoupled decay from the groups' ``explicit_weight_decay``.

    The decay runs after the closure (so after backward and Lightning's gradient clipping)
    and right before the base update, as SGD's and AdamW's own decay do.
    """

    def step(self: torch.optim.Optimizer, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for group in self.param_groups:
                wd = group.get("explicit_weight_decay", 0.0)
                for p in group["params"]:
                    if not wd or p.grad is None:
                        continue
                    if mode == "coupled":  # in place: p.grad after the step includes wd * p
                        p.grad.add_(p, alpha=wd)
                    else:
                        p.mul_(1.0 - group["lr"] * wd)
        cls.step(self)
        return loss

    return type(f"{cls.__name__}_{mode}_decay", (cls,), {"step": step, "__doc__": cls.__doc__})


def make_optimizer(
    model: nn.Module,
    optimizer_spec: dict[str, Any],
    regularization: dict[str, Any] | None,
    lr_mult: Callable[[str], float] | None = None,
    include_frozen: bool = False,
) -> torch.optim.Optimizer:
    """The optimizer of ``optimizer_spec`` over :func:`param_groups` of ``model``, with the decay mode applied.

    ``lr_mult`` and ``include_frozen`` are :func:`param_groups`' (see :mod:`trainkit.nn.transfer`).
    """
    reg = check_regularization(regularization)
    name, kwargs = check_optimizer(optimizer_spec)
    wd = float(kwargs.get("weight_decay", _default_weight_decay(name)))
    lr = kwargs.get("lr", inspect.signature(optimizer_class(name)).parameters["lr"].default if lr_mult else None)
    groups = param_groups(model, wd, reg["no_decay_bias_norm"], lr_mult, lr, include_frozen)
    if reg["weight_decay_mode"] == "optimizer":
        return build_optimizer(groups, optimizer_spec)
    for group in groups:  # the optimizer sees no decay; the wrapper applies the requested kind
        group["explicit_weight_decay"], group["weight_decay"] = group["weight_decay"], 0.0
    optimizer = build_optimizer(groups, optimizer_spec)
    optimizer.__class__ = _with_explicit_decay(type(optimizer), reg["weight_decay_mode"])
    return optimizer
