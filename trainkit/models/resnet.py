"""Residual nets for small images: CIFAR-style resnet20/32/56/110 and resnet18 with a 3x3 stem."""

from __future__ import annotations

from torch import Tensor, nn

from trainkit.errors import ConfigError
from trainkit.models import ARCHS
from trainkit.nn.activations import ActivationSpec, make_activation
from trainkit.nn.norm import NormSpec, conv_bias, make_norm


class BasicBlock(nn.Module):
    """Two 3x3 convs with a shortcut (He et al. 2016); a 1x1 projection where the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int, activation: ActivationSpec, norm: NormSpec):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=conv_bias(norm))
        self.norm1 = make_norm(norm, c_out, spatial=True)
        self.act1 = make_activation(activation)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=conv_bias(norm))
        self.norm2 = make_norm(norm, c_out, spatial=True)
        self.act2 = make_activation(activation)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:  # option B of the paper: projection shortcut
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=conv_bias(norm)), make_norm(norm, c_out, spatial=True))

    def zero_init_last(self) -> None:
        """Start the residual branch at zero, so the block starts as the identity (Goyal et al. 2017)."""
        if getattr(self.norm2, "weight", None) is not None:
            nn.init.zeros_(self.norm2.weight)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.norm1(self.conv1(x)))
        return self.act2(self.norm2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """3x3 stem (no max-pool: inputs are small), stages of basic blocks, global pool, linear head."""

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], widths: tuple[int, ...], blocks: int | tuple[int, ...],
                 activation: ActivationSpec, norm: NormSpec, dropout: float):
        super().__init__()
        if len(input_shape) != 3:
            raise ConfigError(f"resnets need image inputs (C, H, W), got input shape {tuple(input_shape)}", "model.arch")
        counts = (blocks,) * len(widths) if isinstance(blocks, int) else tuple(blocks)
        self.stem = nn.Sequential(nn.Conv2d(input_shape[0], widths[0], 3, 1, 1, bias=conv_bias(norm)),
                                  make_norm(norm, widths[0], spatial=True), make_activation(activation))
        layers, c_in = [], widths[0]
        for stage, (width, n) in enumerate(zip(widths, counts)):
            for i in range(n):
                layers.append(BasicBlock(c_in, width, 2 if stage > 0 and i == 0 else 1, activation, norm))
                c_in = width
        self.blocks = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.pool(self.blocks(self.stem(x)))))


def _cifar(depth: int):
    n = (depth - 2) // 6

    def build(num_classes: int, input_shape: tuple[int, ...], activation: ActivationSpec = "relu",
              norm: NormSpec = "batch", dropout: float = 0.0, width: int = 16) -> nn.Module:
        if width < 1:
            raise ConfigError(f"width must be >= 1, got {width}", "model.arch_args.width")
        return ResNet(num_classes, input_shape, (width, 2 * width, 4 * width), n, activation, norm, dropout)

    build.__doc__ = (f"CIFAR ResNet-{depth} (He et al. 2016): 3 stages x {n} basic blocks, widths w, 2w, 4w "
                     "(width w=16)\n\nArgs:\n    width: channels of the first stage.")
    return build


for _depth in (20, 32, 56, 110):
    ARCHS.register(f"resnet{_depth}", _cifar(_depth))


@ARCHS.register("resnet18")
def resnet18(num_classes: int, input_shape: tuple[int, ...], activation: ActivationSpec = "relu",
             norm: NormSpec = "batch", dropout: float = 0.0, width: int = 64) -> nn.Module:
    """ResNet-18 with a 3x3 stride-1 stem and no max-pool, for small images: 4 stages x 2 blocks

    Args:
        width: channels of the first stage (then 2x, 4x, 8x).
    """
    if width < 1:
        raise ConfigError(f"width must be >= 1, got {width}", "model.arch_args.width")
    return ResNet(num_classes, input_shape, (width, 2 * width, 4 * width, 8 * width), 2, activation, norm, dropout)
