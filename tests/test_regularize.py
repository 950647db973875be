"""Weight decay groups, coupled vs decoupled decay, penalties and label smoothing."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from conftest import DEFAULT_RECIPE, QUIET
from torch import nn

from trainkit.errors import ConfigError
from trainkit.module import Classifier
from trainkit.nn.craft import build_net
from trainkit.nn.norm import is_norm
from trainkit.nn.regularize import make_optimizer, param_groups, penalty
from trainkit.runner import TrainkitCLI


@pytest.mark.parametrize("arch, norm", [("mlp", "batch"), ("mlp", "layer"), ("cnn", "group"), ("resnet20", "batch"),
                                        ("mlp", "weight")])
def test_decay_group_holds_no_bias_or_norm_parameter(arch, norm):
    net = build_net(arch, 10, (1, 8, 8), {"name": "prelu"}, None, norm, None, None)
    groups = param_groups(net, 5e-4)
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 5e-4 and groups[1]["weight_decay"] == 0.0
    names = {id(p): n for n, p in net.named_parameters()}
    owners = {id(p): m for m in net.modules() for p in m.parameters(recurse=False)}
    for pid in decayed:
        assert not names[pid].endswith("bias") and not is_norm(owners[pid]) and "original0" not in names[pid], names[pid]
        assert "weight" in names[pid] or "original1" in names[pid]
    # every trainable parameter is in exactly one group
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(all_ids) == sorted(names) and len(set(all_ids)) == len(all_ids)
    one = param_groups(net, 5e-4, no_decay_bias_norm=False)
    assert len(one) == 1 and len(one[0]["params"]) == len(names)


def one_step(optimizer: dict, mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w0, grad, w1) of one optimizer step of a linear layer."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3, bias=False)
    w0 = model.weight.detach().clone()
    opt = make_optimizer(model, optimizer, {"weight_decay_mode": mode})
    x = torch.randn(8, 4)
    grads = []

    def closure():
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        grads.append(model.weight.grad.detach().clone())  # the loss gradient, before any decay term
        return loss

    opt.step(closure)
    return w0, grads[0], model.weight.detach().clone()


LR, WD, EPS = 0.1, 0.2, 1e-8


@pytest.mark.parametrize("mode", ["coupled", "decoupled", "optimizer"])
def test_sgd_decay_follows_its_formula_on_one_step(mode):
    w0, g, w1 = one_step({"name": "sgd", "lr": LR, "weight_decay": WD}, mode)
    if mode in ("coupled", "optimizer"):  # SGD's own weight_decay is coupled
        expected = w0 - LR * (g + WD * w0)
    else:
        expected = w0 * (1 - LR * WD) - LR * g
    torch.testing.assert_close(w1, expected)


@pytest.mark.parametrize("name, mode", [("adam", "coupled"), ("adamw", "coupled"), ("adam", "decoupled"),
                                        ("adamw", "decoupled"), ("adam", "optimizer"), ("adamw", "optimizer")])
def test_adam_decay_follows_its_formula_on_one_step(name, mode):
    w0, g, w1 = one_step({"name": name, "lr": LR, "weight_decay": WD, "eps": EPS}, mode)
    coupled = mode == "coupled" or (mode == "optimizer" and name == "adam")
    # Adam's first step (bias-corrected) moves each weight by lr * g / (|g| + eps)
    if coupled:
        gd = g + WD * w0
        expected = w0 - LR * gd / (gd.abs() + EPS)
    else:
        expected = w0 * (1 - LR * WD) - LR * g / (g.abs() + EPS)
    torch.testing.assert_close(w1, expected)


def test_penalty_is_elastic_net_on_decayed_weights_and_is_logged():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    weights = [net[0].weight, net[2].weight]
    expected = sum(0.01 * w.abs().sum() + 0.5 * 0.1 * w.pow(2).sum() for w in weights)
    torch.testing.assert_close(penalty(net, 0.01, 0.1), expected)
    # in a real fit with lr 0 the weights stay put, so the logged value is the initial penalty
    cli = TrainkitCLI(["fit", "--config", str(DEFAULT_RECIPE), "--trainer.max_epochs=1", "--trainer.limit_train_batches=1",
                       "--trainer.limit_val_batches=1", "--data.num_workers=0", "--run.name=pen", *QUIET,
                       "--model.optimizer.lr=0", "--model.regularization={l1: 1.0e-4, l2: 1.0e-3}"])
    rows = list(csv.DictReader((cli.run_dir.path / "metrics.csv").open()))
    logged = [float(r["train/penalty"]) for r in rows if r.get("train/penalty")]
    assert len(logged) == 1 and logged[0] > 0
    assert logged[0] == pytest.approx(float(penalty(cli.model.net, 1e-4, 1e-3)), rel=1e-5)


@pytest.mark.parametrize("spec, key", [({"l1": -1}, "model.regularization.l1"), ({"mode": "x"}, "model.regularization"),
                                       ({"weight_decay_mode": "both"}, "model.regularization.weight_decay_mode")])
def test_bad_regularization_is_named(spec, key):
    with pytest.raises(ConfigError, match=key):
        Classifier(regularization=spec)


def test_label_smoothing_in_the_training_loss_only():
    torch.manual_seed(0)
    model = Classifier(arch_args={"depth": 1, "width": 8}, label_smoothing=0.2)
    x, y = torch.randn(16, 1, 8, 8), torch.arange(16) % 10
    logp = model(x).log_softmax(-1).detach()
    nll, uniform = -logp.gather(1, y[:, None]).mean(), -logp.mean()
    expected = 0.8 * nll + 0.2 * uniform  # (1 - eps) CE + eps * CE against the uniform distribution
    train_loss = model.model_step((x, y), "train").detach()
    val_loss = model.model_step((x, y), "val")
    assert float(train_loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(val_loss) == pytest.approx(float(nll), rel=1e-5)
    assert float(nll) != pytest.approx(float(expected), rel=1e-3)
    with pytest.raises(ConfigError, match="model.label_smoothing"):
        Classifier(label_smoothing=1.0)


def test_configure_optimizers_uses_the_groups():
    cli = TrainkitCLI(["fit", "--config", str(DEFAULT_RECIPE), "--trainer.fast_dev_run=true", "--data.num_workers=0", *QUIET,
                       "--model.norm=batch"])
    groups = cli.trainer.optimizers[0].param_groups
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    assert all(p.ndim == 2 for p in groups[0]["params"]) and all(p.ndim == 1 for p in groups[1]["params"])
    assert math.isclose(groups[0]["lr"], 0.1)
