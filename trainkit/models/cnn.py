"""VGG-style conv net: stages of 3x3 conv, [norm], activation, then 2x2 max-pool; global pool, head."""

from __future__ import annotations

from torch import nn

from trainkit.errors import ConfigError
from trainkit.models import ARCHS
from trainkit.nn.activations import ActivationSpec, make_activation
from trainkit.nn.norm import NormSpec, conv_bias, make_norm


@ARCHS.register("cnn")
def cnn(
    num_classes: int,
    input_shape: tuple[int, ...],
    activation: ActivationSpec = "relu",
    norm: NormSpec = "batch",
    dropout: float = 0.0,
    channels: tuple[int, ...] = (32, 64),
    convs_per_stage: int = 2,
) -> nn.Module:
    """VGG-style conv stack (Simonyan & Zisserman 2015) for small images.

    Args:
        num_classes: output logits.
        input_shape: (C, H, W) of one image.
        activation: the activation after each conv (``model.activation``).
        norm: norm after each conv (``model.norm``).
        dropout: dropout rate before the head (``model.dropout``).
        channels: output channels of each stage; every stage but the last halves H and W.
        convs_per_stage: 3x3 convs per stage.
    """
    if len(input_shape) != 3:
        raise ConfigError(f"cnn needs image inputs (C, H, W), got input shape {tuple(input_shape)}", "model.arch")
    if not channels or convs_per_stage < 1 or min(channels) < 1:
        raise ConfigError(f"cnn needs channels >= 1 and convs_per_stage >= 1, got {channels}, {convs_per_stage}",
                          "model.arch_args")
    layers: list[nn.Module] = []
    c_in, size = input_shape[0], min(input_shape[1:])
    for stage, c_out in enumerate(channels):
        for _ in range(convs_per_stage):
            # a norm right after the conv makes the conv bias redundant
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=conv_bias(norm)), make_norm(norm, c_out, spatial=True),
                       make_activation(activation)]
            c_in = c_out
        if stage < len(channels) - 1 and size >= 2:
            layers.append(nn.MaxPool2d(2))
            size //= 2
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(c_in, num_classes))
    return nn.Sequential(*[m for m in layers if not isinstance(m, nn.Identity)])
