"""Activation functions by name (``model.activation``)."""

from __future__ import annotations

from torch import nn

from trainkit.errors import ConfigError
from trainkit.registry import Registry

ACTIVATIONS: Registry = Registry("activation")
ACTIVATIONS.register("relu", nn.ReLU, description="max(0, x)")
ACTIVATIONS.register("tanh", nn.Tanh, description="hyperbolic tangent, zero-centred, saturates at +-1")
ACTIVATIONS.register("sigmoid", nn.Sigmoid, description="logistic 1 / (1 + exp(-x)), saturates at 0 and 1")
ACTIVATIONS.register("gelu", nn.GELU, description="x * Phi(x), the transformer default")
ACTIVATIONS.register("silu", nn.SiLU, description="x * sigmoid(x) (swish)")
ACTIVATIONS.register("elu", nn.ELU, description="x for x > 0, exp(x) - 1 otherwise")


def make_activation(name: str) -> nn.Module:
    """A fresh activation module for ``name``.

    Raises:
        ConfigError: unknown name, attributed to ``model.activation``.
    """
    try:
        return ACTIVATIONS.get(name)()
    except ConfigError as e:
        raise e.with_key("model.activation") from None
