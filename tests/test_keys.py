"""The recipe keys of the foundation do what DESIGN.md says (checked on the built objects)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import DEFAULT_RECIPE, QUIET
from torch import nn

from trainkit.runner import TrainkitCLI


def build(*overrides: str) -> TrainkitCLI:
    """A real fit of one batch (fast_dev_run) with the default recipe plus overrides."""
    args = ["fit", "--config", str(DEFAULT_RECIPE), "--trainer.fast_dev_run=true", "--data.num_workers=0"]
    return TrainkitCLI([*args, *QUIET, *overrides])


def weights(cli: TrainkitCLI) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in cli.model.parameters()])


def test_seed_everything_makes_runs_repeatable():
    a, b, c = build(), build(), build("--seed_everything=1")
    assert torch.equal(weights(a), weights(b))
    assert not torch.allclose(weights(a), weights(c))


def test_run_keys_place_the_run_dir():
    cli = build("--run.root=elsewhere", "--run.experiment=exp", "--run.name=n1")
    assert cli.run_dir.path == Path("elsewhere/exp/n1")
    assert Path("elsewhere/exp/n1/config.yaml").is_file()
    default = build()
    assert default.run_dir.path.parent == Path("runs/digits_mlp"), "experiment defaults to the recipe stem"


def test_model_arch_args_and_activation():
    cli = build("--model.arch_args={depth: 1, width: 16}", "--model.activation=tanh")
    linears = [m for m in cli.model.net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 16), (16, 10)]
    assert sum(isinstance(m, nn.Tanh) for m in cli.model.net) == 1
    assert not any(isinstance(m, nn.ReLU) for m in cli.model.net)


def test_model_optimizer_by_name_with_its_arguments():
    cli = build("--model.optimizer={name: adamw, lr: 0.01, weight_decay: 0.05, betas: [0.8, 0.9]}")
    opt = cli.trainer.optimizers[0]
    assert isinstance(opt, torch.optim.AdamW)
    group = opt.param_groups[0]
    assert (group["lr"], group["weight_decay"], tuple(group["betas"])) == (0.01, 0.05, (0.8, 0.9))
    sgd = build("--model.optimizer.lr=0.05").trainer.optimizers[0]
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["lr"] == 0.05
    assert sgd.param_groups[0]["nesterov"] is True and sgd.param_groups[0]["momentum"] == 0.9


def test_data_keys_shape_the_splits_and_loaders():
    cli = build("--data.batch_size=32", "--data.val_fraction=0.2", "--data.test_fraction=0.1")
    dm = cli.datamodule
    sizes = {s: len(dm.splits[s]) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 1797
    assert sizes["test"] == pytest.approx(180, abs=1) and sizes["val"] == pytest.approx(359, abs=1)
    loader = dm.train_dataloader()
    assert loader.batch_size == 32 and loader.num_workers == 0
    assert build("--data.num_workers=2", "--data.persistent_workers=false").datamodule.train_dataloader().num_workers == 2


def test_dataset_sets_classes_and_input_shape_of_the_model():
    cli = build("--data.dataset=breast_cancer")
    first, last = cli.model.net[1], cli.model.net[-1]
    assert first.in_features == 30 and last.out_features == 2
    assert cli.model.hparams.num_classes == 2 and tuple(cli.model.hparams.input_shape) == (30,)
