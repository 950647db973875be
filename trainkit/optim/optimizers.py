"""Optimizers by name: ``model.optimizer: {name: sgd, lr: 0.1, momentum: 0.9, ...}``.

Every key besides ``name`` is a keyword argument of the optimizer; unknown keys are errors
before anything runs. torch's own optimizers come first; lookahead, ranger, lars, lamb and
lion come from the pytorch-optimizer package rather than being written here by hand. ``name``
may also be the class path of any ``torch.optim.Optimizer`` (``torch.optim.Adamax``, a user's
``my_pkg.optim.MyOpt``), imported as ``python -m`` would.

The arguments are checked when the recipe is read (:func:`check_optimizer`): against the
class's signature and annotations, and by building the optimizer once on a dummy parameter
and taking a step, so its own range checks (``momentum >= 0``, ``betas`` in [0, 1), nesterov
needs momentum, ...) refuse bad values with exit code 2 naming the key, not at the first step.

``lookahead`` wraps any other optimizer: ``{name: lookahead, base: adamw, k: 5, alpha: 0.5,
lr: 1.0e-3, <base's arguments>}``.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable

import pytorch_optimizer as po
import torch

from trainkit.arguments import call_checked, check_types
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
    inner = optimizer_class(base, f"{KEY}.base")(params, **base_kwargs)
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


# what is valid, where the optimizer's own message says only "Invalid ... value"
VALID = {
    "lr": "a number >= 0", "momentum": "a number >= 0", "weight_decay": "a number >= 0", "eps": "a number >= 0",
    "dampening": "a number", "betas": "numbers in [0, 1)", "alpha": "a number >= 0", "k": "an integer >= 1",
}
# implementation switches (kernels per device): checked by type only, the dummy is on the CPU
IMPLEMENTATION = ("fused", "foreach", "capturable", "differentiable")


def optimizer_class(name: str, key: str = f"{KEY}.name") -> Callable[..., torch.optim.Optimizer]:
    """The optimizer registered as ``name``, or the ``torch.optim.Optimizer`` at class path ``name``.

    Raises:
        ConfigError: an unknown name, or a class path that is not an Optimizer subclass.
    """
    return OPTIMIZERS.resolve(name, key, torch.optim.Optimizer)


def _step_once(cls: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Build the optimizer on a dummy parameter and step it: what the run will do first."""
    param = torch.nn.Parameter(torch.ones(2, 2))
    param.grad = torch.full((2, 2), 0.5)
    cls([param], **{k: v for k, v in kwargs.items() if k not in IMPLEMENTATION}).step()


def check_optimizer(spec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Validate an optimizer spec and split it into (name, keyword arguments).

    Raises:
        ConfigError: no or unknown ``name``, an argument the optimizer does not take, a value
            of the wrong type, or one the optimizer refuses (the message names the key).
    """
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"needs a 'name' (one of: {', '.join(OPTIMIZERS.names())}, or a class path), got {spec!r}", KEY)
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    name = spec["name"]
    cls = optimizer_class(name)
    try:
        if name == "lookahead":
            base = kwargs.get("base", "sgd")
            if base == "lookahead":
                raise ConfigError("lookahead cannot wrap lookahead", f"{KEY}.base")
            base_cls = optimizer_class(base, f"{KEY}.base")
            base_kwargs = {k: v for k, v in kwargs.items() if k not in (*LOOKAHEAD_ARGS, "base")}
            check_kwargs(_named_params(base_cls), base_kwargs, f"optimizer {base!r} (lookahead's base)", skip=("params",))
            check_types(base_cls, base_kwargs, KEY)
            check_types(po.Lookahead, {k: v for k, v in kwargs.items() if k in LOOKAHEAD_ARGS}, KEY)
        else:
            check_kwargs(_named_params(cls), kwargs, f"optimizer {name!r}", skip=("params",))
            check_types(cls, kwargs, KEY)
    except ConfigError as e:
        raise e.with_key(KEY) from None
    lr = kwargs.get("lr", 1e-3)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (0 <= lr < float("inf")):
        raise ConfigError(f"lr must be a finite number >= 0, got {lr!r}", f"{KEY}.lr")
    call_checked(cls, kwargs, KEY, f"optimizer {name!r}", hints=VALID, call=_step_once)
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
    return optimizer_class(name)(params, **implementation_defaults(name, kwargs, first.device))
