"""Optimizers by name: ``model.optimizer: {name: sgd, lr: 0.1, momentum: 0.9, ...}``.

Every key besides ``name`` is a keyword argument of the optimizer; unknown keys are errors
before anything runs. torch's own optimizers come first; lookahead, ranger, lars, lamb and
lion come from the pytorch-optimizer package rather than being written here by hand.

``lookahead`` wraps any other optimizer: ``{name: lookahead, base: adamw, k: 5, alpha: 0.5,
lr: 1.0e-3, <base's arguments>}``.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable

import pytorch_optimizer as po
import torch

from trainkit.errors import ConfigError
from trainkit.registry import Registry, check_kwargs

OPTIMIZERS: Registry = Registry("optimizer")
OPTIMIZERS.register("sgd", torch.optim.SGD, description="stochastic gradient descent (momentum, nesterov, dampening)")
OPTIMIZERS.register("adagrad", torch.optim.Adagrad, description="Adagrad (Duchi et al. 2011): per-weight lr from summed squared gradients")
OPTIMIZERS.register("rmsprop", torch.optim.RMSprop, description="RMSprop (Hinton): lr divided by a running RMS of gradients")
OPTIMIZERS.register("adam", torch.optim.Adam, description="Adam (Kingma & Ba 2015), coupled L2 weight decay")
OPTIMIZERS.register("adamw", torch.optim.AdamW, description="Adam with decoupled weight decay (Loshchilov & Hutter)")
OPTIMIZERS.register("nadam", torch.optim.NAdam, description="Adam with Nesterov momentum (Dozat 2016)")
OPTIMIZERS.register("radam", torch.optim.RAdam, description="Rectified Adam (Liu et al. 2020): variance-corrected warmup built in")
OPTIMIZERS.register("ranger", po.Ranger, description="RAdam + Lookahead + gradient centralization (pytorch-optimizer)")
OPTIMIZERS.register("lars", po.LARS, description="LARS (You et al. 2017): layer-wise trust ratio for large batches (pytorch-optimizer)")
OPTIMIZERS.register("lamb", po.Lamb, description="LAMB (You et al. 2020): layer-wise adaptive Adam for large batches (pytorch-optimizer)")
OPTIMIZERS.register("lion", po.Lion, description="Lion (Chen et al. 2023): sign of interpolated momentum; use ~10x smaller lr (pytorch-optimizer)")

LOOKAHEAD_ARGS = ("k", "alpha", "pullback_momentum")


@OPTIMIZERS.register("lookahead")
def lookahead(params: Iterable[Any], base: str = "sgd", k: int = 5, alpha: float = 0.5, pullback_momentum: str = "none", **base_kwargs: Any) -> torch.optim.Optimizer:
    """Lookahead (Zhang et al. 2019) around any optimizer `base`: slow weights every k steps (pytorch-optimizer)."""
    inner = OPTIMIZERS.get(base)(params, **base_kwargs)
    return po.Lookahead(inner, k=k, alpha=alpha, pullback_momentum=pullback_momentum)


# torch's fused kernels (one launch for all parameters) exist for these on CUDA; the others
# default to the foreach (multi-tensor) path on CUDA by themselves.
FUSED_ON_CUDA = ("sgd", "adam", "adamw")

KEY = "model.optimizer"


def _named_params(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``'s signature without ``**kwargs``: pytorch-optimizer classes swallow unknown
    keywords, so a misspelled argument would otherwise be ignored silently."""
    sig = inspect.signature(fn)
    params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]

    def stub() -> None: ...

    stub.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return stub


def check_optimizer(spec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Validate an optimizer spec and split it into (name, keyword arguments).

    Raises:
        ConfigError: no or unknown ``name``, an argument the optimizer does not take, or a
            learning rate that is negative or not finite.
    """
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"needs a 'name' (one of: {', '.join(OPTIMIZERS.names())}), got {spec!r}", KEY)
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    name = spec["name"]
    try:
        cls = OPTIMIZERS.get(name)
        if name == "lookahead":
            base = kwargs.get("base", "sgd")
            if base == "lookahead":
                raise ConfigError("lookahead cannot wrap lookahead", f"{KEY}.base")
            base_cls = OPTIMIZERS.get(base)
            base_kwargs = {k: v for k, v in kwargs.items() if k not in (*LOOKAHEAD_ARGS, "base")}
            check_kwargs(_named_params(base_cls), base_kwargs, f"optimizer {base!r} (lookahead's base)", skip=("params",))
        else:
            check_kwargs(_named_params(cls), kwargs, f"optimizer {name!r}", skip=("params",))
    except ConfigError as e:
        raise e.with_key(KEY) from None
    lr = kwargs.get("lr", 1e-3)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (0 <= lr < float("inf")):
        raise ConfigError(f"lr must be a finite number >= 0, got {lr!r}", f"{KEY}.lr")
    return name, kwargs


def implementation_defaults(name: str, kwargs: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """``kwargs`` plus ``fused=True`` where torch has a fused kernel for ``name`` on ``device``.

    An explicit ``fused`` or ``foreach`` in the recipe always wins.

    >>> implementation_defaults("adamw", {"lr": 0.1}, "cuda:0")
    {'lr': 0.1, 'fused': True}
    >>> implementation_defaults("adamw", {"lr": 0.1}, "cpu")
    {'lr': 0.1}
    """
    base = kwargs.get("base", "sgd") if name == "lookahead" else name
    if torch.device(device).type == "cuda" and base in FUSED_ON_CUDA and not {"fused", "foreach"} & kwargs.keys():
        return {**kwargs, "fused": True}
    return dict(kwargs)


def build_optimizer(params: Iterable[Any], spec: dict[str, Any]) -> torch.optim.Optimizer:
    """Instantiate the optimizer a (validated) spec names over ``params``."""
    name, kwargs = check_optimizer(spec)
    params = list(params)
    first = params[0]["params"][0] if isinstance(params[0], dict) else params[0]
    return OPTIMIZERS.get(name)(params, **implementation_defaults(name, kwargs, first.device))
