"""Init schemes decide whether a deep plain net trains: real (short) runs on the embedded digits."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import QUIET, ROOT
from torch import nn

from trainkit.runner import TrainkitCLI

STUDY = ROOT / "recipes" / "init_study.yaml"  # 30 ReLU layers of 64 units, no norm, Adam


def fit(*overrides: str) -> TrainkitCLI:
    return TrainkitCLI(["fit", "--config", str(STUDY), "--trainer.max_epochs=3", "--data.num_workers=0",
                        "--trainer.logger=false", *QUIET, *overrides])


def test_30_layer_relu_mlp_learns_with_kaiming_and_barely_moves_with_small_normal():
    five = "--trainer.max_epochs=5"
    kaiming = fit("--run.name=kaiming", "--model.init={scheme: kaiming_normal}", five).result.metrics
    small = fit("--run.name=small", "--model.init={scheme: normal, std: 0.01}", five).result.metrics
    assert kaiming["val/acc"] >= 0.5, kaiming
    # the signal vanishes through 30 layers: the loss stays at chance level, ln(10)
    assert small["val/acc"] <= 0.2 and small["val/loss"] == pytest.approx(math.log(10), abs=0.05), small
    assert kaiming["val/loss"] < small["val/loss"] - 0.5


def test_constant_init_never_breaks_symmetry():
    cli = fit("--run.name=constant", "--trainer.max_epochs=2", "--model.arch_args={depth: 3, width: 32}",
              "--model.init={scheme: constant, value: 0.05}")
    hidden = [m for m in cli.model.net if isinstance(m, nn.Linear)][:-1]
    assert len(hidden) == 3
    for layer in hidden:
        w, b = layer.weight.detach(), layer.bias.detach()
        assert not torch.allclose(w, torch.full_like(w, 0.05)), "training changed the weights"
        # every unit of the layer is still the same unit
        torch.testing.assert_close(w, w[:1].expand_as(w))
        torch.testing.assert_close(b, b[:1].expand_as(b))
