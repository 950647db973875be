"""Optimizers by name: ``model.optimizer: {name: sgd, lr: 0.1, momentum: 0.9, ...}``.

Every key besides ``name`` is a keyword argument of the optimizer; unknown keys are errors
before anything runs.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from trainkit.errors import ConfigError
from trainkit.registry import Registry, check_kwargs

OPTIMIZERS: Registry = Registry("optimizer")
OPTIMIZERS.register("sgd", torch.optim.SGD, description="stochastic gradient descent (momentum, nesterov, dampening)")
OPTIMIZERS.register("adam", torch.optim.Adam, description="Adam (Kingma & Ba 2015), coupled L2 weight decay")
OPTIMIZERS.register("adamw", torch.optim.AdamW, description="Adam with decoupled weight decay (Loshchilov & Hutter)")

KEY = "model.optimizer"


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
        check_kwargs(cls, kwargs, f"optimizer {name!r}", skip=("params",))
    except ConfigError as e:
        raise e.with_key(KEY) from None
    lr = kwargs.get("lr", 1e-3)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (0 <= lr < float("inf")):
        raise ConfigError(f"lr must be a finite number >= 0, got {lr!r}", f"{KEY}.lr")
    return name, kwargs


def build_optimizer(params: Iterable[Any], spec: dict[str, Any]) -> torch.optim.Optimizer:
    """Instantiate the optimizer a (validated) spec names over ``params``."""
    name, kwargs = check_optimizer(spec)
    return OPTIMIZERS.get(name)(params, **kwargs)
