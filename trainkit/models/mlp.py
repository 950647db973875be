"""Multi-layer perceptron: flatten, ``depth`` hidden layers of ``width`` units, linear head."""

from __future__ import annotations

import math

from torch import nn

from trainkit.errors import ConfigError
from trainkit.models import ARCHS
from trainkit.nn.activations import ActivationSpec, make_activation
from trainkit.nn.norm import NormSpec, make_norm


@ARCHS.register("mlp")
def mlp(
    num_classes: int,
    input_shape: tuple[int, ...],
    activation: ActivationSpec = "relu",
    norm: NormSpec = "none",
    dropout: float = 0.0,
    depth: int = 2,
    width: int = 256,
    norm_position: str = "before",
) -> nn.Module:
    """Fully connected net: flatten, depth x (linear, [norm], activation, [dropout]), linear head.

    Args:
        num_classes: output logits.
        input_shape: shape of one input (C, H, W) or (features,).
        activation: the hidden activation (``model.activation``).
        norm: norm layer of each hidden layer (``model.norm``).
        dropout: dropout rate after each hidden activation (``model.dropout``).
        depth: number of hidden layers (0 gives logistic/softmax regression).
        width: units per hidden layer.
        norm_position: ``before`` the activation (Ioffe & Szegedy) or ``after`` it.
    """
    if depth < 0 or width < 1:
        raise ConfigError(f"mlp needs depth >= 0 and width >= 1, got depth={depth}, width={width}", "model.arch_args")
    if norm_position not in ("before", "after"):
        raise ConfigError(f"must be before or after, got {norm_position!r}", "model.arch_args.norm_position")
    layers: list[nn.Module] = [nn.Flatten()]
    fan_in = math.prod(input_shape)
    for _ in range(depth):
        pair = [make_norm(norm, width, spatial=False), make_activation(activation)]
        block = [nn.Linear(fan_in, width), *(pair if norm_position == "before" else pair[::-1])]
        # an Identity norm is left out, so norm: none keeps the plain (linear, activation) stack
        layers += [m for m in block if not isinstance(m, nn.Identity)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        fan_in = width
    layers.append(nn.Linear(fan_in, num_classes))
    return nn.Sequential(*layers)
