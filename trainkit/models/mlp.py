"""Multi-layer perceptron: flatten, ``depth`` hidden layers of ``width`` units, linear head."""

from __future__ import annotations

import math

from torch import nn

from trainkit.errors import ConfigError
from trainkit.models import ARCHS
from trainkit.nn.activations import make_activation


@ARCHS.register("mlp")
def mlp(
    num_classes: int, input_shape: tuple[int, ...], activation: str = "relu", depth: int = 2, width: int = 256
) -> nn.Module:
    """Fully connected net: flatten, depth x (linear, activation), linear head.

    Args:
        num_classes: output logits.
        input_shape: shape of one input (C, H, W) or (features,).
        activation: registry name of the hidden activation.
        depth: number of hidden layers (0 gives logistic/softmax regression).
        width: units per hidden layer.
    """
    if depth < 0 or width < 1:
        raise ConfigError(f"mlp needs depth >= 0 and width >= 1, got depth={depth}, width={width}", "model.arch_args")
    layers: list[nn.Module] = [nn.Flatten()]
    fan_in = math.prod(input_shape)
    for _ in range(depth):
        layers += [nn.Linear(fan_in, width), make_activation(activation)]
        fan_in = width
    layers.append(nn.Linear(fan_in, num_classes))
    return nn.Sequential(*layers)
