"""Activation functions by name (``model.activation``), and the init gain each one implies.

A recipe names an activation by a string (``activation: tanh``) or by a mapping with its
arguments (``activation: {name: leaky_relu, negative_slope: 0.1}``). The name may also be the
class path of any ``nn.Module`` (``torch.nn.Hardswish``, ``{name: torch.nn.Hardtanh, min_val: -2}``,
a user's ``my_pkg.act.Swish``); its arguments are checked against its signature and it is
built once when the recipe is read.
"""

from __future__ import annotations

import math
from typing import Any, Union

import numpy as np
import torch
from torch import nn

from trainkit.arguments import call_checked, check_types
from trainkit.registry import Registry

ActivationSpec = Union[str, dict[str, Any]]
KEY = "model.activation"

ACTIVATIONS: Registry = Registry("activation")
ACTIVATIONS.register("relu", nn.ReLU, description="max(0, x)")
ACTIVATIONS.register("tanh", nn.Tanh, description="hyperbolic tangent, zero-centred, saturates at +-1")
ACTIVATIONS.register("sigmoid", nn.Sigmoid, description="logistic 1 / (1 + exp(-x)), saturates at 0 and 1")
ACTIVATIONS.register("gelu", nn.GELU, description="x * Phi(x), the transformer default")
ACTIVATIONS.register("silu", nn.SiLU, description="x * sigmoid(x) (swish)")
ACTIVATIONS.register("elu", nn.ELU, description="x for x > 0, alpha * (exp(x) - 1) otherwise (alpha)")
ACTIVATIONS.register("leaky_relu", nn.LeakyReLU, description="x for x > 0, negative_slope * x otherwise (negative_slope)")
ACTIVATIONS.register("prelu", nn.PReLU, description="leaky ReLU whose slope is learned (init, num_parameters)")


def activation_class(name: str) -> type[nn.Module]:
    """The activation registered as ``name``, or the ``nn.Module`` subclass at class path ``name``.

    Raises:
        ConfigError: an unknown name, or a class path that is not an nn.Module subclass.
    """
    return ACTIVATIONS.resolve(name, KEY, nn.Module)


def split_spec(spec: ActivationSpec) -> tuple[str, dict[str, Any]]:
    """``(name, keyword arguments)`` of an activation spec, validated (the module is built once).

    >>> split_spec({"name": "leaky_relu", "negative_slope": 0.1})
    ('leaky_relu', {'negative_slope': 0.1})

    Raises:
        ConfigError: no or unknown name, an argument the activation does not take, or a value
            it refuses.
    """
    name, kwargs = ACTIVATIONS.split_spec(spec, KEY, skip=("inplace",), base=nn.Module)
    cls = activation_class(name)
    check_types(cls, kwargs, KEY)
    call_checked(cls, kwargs, KEY, f"activation {name!r}")
    return name, kwargs


def make_activation(spec: ActivationSpec) -> nn.Module:
    """A fresh activation module for ``spec`` (a name or ``{name: ..., <arguments>}``).

    Raises:
        ConfigError: unknown name or argument, attributed to ``model.activation``.
    """
    name, kwargs = split_spec(spec)
    return activation_class(name)(**kwargs)


def _second_moment_gain(fn: Any) -> float:
    """1 / sqrt(E[f(z)^2]) for z ~ N(0, 1), by Gauss-Hermite quadrature.

    This is the gain that keeps the second moment of pre-activations at 1 from layer to layer
    (He et al. 2015's derivation, which gives sqrt(2) for ReLU); torch's calculate_gain has
    no value for gelu, silu or elu, so we derive one the same way.
    """
    x, w = np.polynomial.hermite_e.hermegauss(80)
    fx = fn(torch.from_numpy(x)).numpy()
    return float(1.0 / math.sqrt((w * fx**2).sum() / w.sum()))


def activation_gain(spec: ActivationSpec) -> float:
    """The init gain recommended for an activation (used by xavier, kaiming, orthogonal, lsuv).

    torch's ``calculate_gain`` values where it has one (sigmoid 1, tanh 5/3, relu sqrt(2),
    leaky_relu sqrt(2 / (1 + slope^2)), prelu with its initial slope); the second-moment gain
    for gelu, silu and elu.

    >>> round(activation_gain("relu"), 4), round(activation_gain({"name": "leaky_relu", "negative_slope": 0.2}), 4)
    (1.4142, 1.3868)
    """
    name, kwargs = split_spec(spec)
    if name in ("sigmoid", "tanh", "relu"):
        return nn.init.calculate_gain(name)
    if name == "leaky_relu":
        return nn.init.calculate_gain("leaky_relu", kwargs.get("negative_slope", 0.01))
    if name == "prelu":
        return nn.init.calculate_gain("leaky_relu", kwargs.get("init", 0.25))
    return _second_moment_gain(make_activation(spec))
