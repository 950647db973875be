"""A user's own architecture, named in recipes by class path (``arch: user_models.TinyNet``)."""

from __future__ import annotations

from torch import nn


class TinyNet(nn.Module):
    """Conv, batch norm, dropout, linear: what a user might bring."""

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], hidden: int = 8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(input_shape[0], hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1))
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.head(self.body(x))
