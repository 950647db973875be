"""Fine-tuning: frozen parameters, gradual unfreezing, discriminative lrs, a new head."""

from __future__ import annotations

import pytest
import torch
from conftest import DEFAULT_RECIPE, QUIET

from trainkit.errors import ConfigError
from trainkit.models import build_arch
from trainkit.nn.init import load_weights
from trainkit.runner import TrainkitCLI

FIT = ["fit", "--config", str(DEFAULT_RECIPE), "--data.num_workers=0", "--trainer.logger=false", *QUIET]


def params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def fit(*overrides: str, run_stage: bool = True) -> TrainkitCLI:
    return TrainkitCLI([*FIT, *overrides], run_stage=run_stage)


def last(cli: TrainkitCLI) -> dict[str, torch.Tensor]:
    """The weights at the end of training (fit itself ends on best.ckpt's)."""
    state = torch.load(cli.run_dir.checkpoints / "last.ckpt", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("net.")}


def test_frozen_parameters_are_bitwise_unchanged_and_the_others_train():
    args = ["--model.freeze=[net.1, net.3.bias]", "--trainer.max_steps=5", "--trainer.limit_val_batches=1"]
    before = params(fit(*args, run_stage=False).model)
    after = last(fit(*args, "--run.name=trained"))
    for name in before:
        frozen = name.startswith("net.1.") or name == "net.3.bias"
        assert torch.equal(before[name], after[name]) == frozen, name


def test_gradual_unfreezing_follows_the_epoch_schedule():
    args = ["--model.freeze=[net.1]", "--trainer.max_epochs=2", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1"]
    before = params(fit(*args, run_stage=False).model)["net.1.weight"]
    late = fit(*args, "--model.unfreeze={5: [net.1]}", "--run.name=late")
    assert torch.equal(last(late)["net.1.weight"], before), "epoch 5 is never reached: still frozen"
    early = fit(*args, "--model.unfreeze={1: [net.1]}", "--run.name=early")
    assert not torch.equal(last(early)["net.1.weight"], before), "unfrozen at epoch 1: trained"
    assert early.model.net[1].weight.requires_grad and not late.model.net[1].weight.requires_grad


def test_discriminative_lrs_appear_in_the_param_groups():
    cli = fit("--trainer.fast_dev_run=true", "--model.lr_mult={net.1: 0.1}", "--model.layer_decay=0.5")
    names = {id(p): n for n, p in cli.model.named_parameters()}
    lrs = {names[id(p)]: g["lr"] for g in cli.trainer.optimizers[0].param_groups for p in g["params"]}
    # digits_mlp: 3 hidden layers (net.1, net.3, net.5) and the head net.7; lr 0.1, no scaling
    assert lrs["net.1.weight"] == pytest.approx(0.01) and lrs["net.1.bias"] == pytest.approx(0.01)
    assert lrs["net.3.weight"] == pytest.approx(0.1 * 0.5**2)
    assert lrs["net.5.bias"] == pytest.approx(0.1 * 0.5)
    assert lrs["net.7.weight"] == pytest.approx(0.1)
    decays = {names[id(p)]: g["weight_decay"] for g in cli.trainer.optimizers[0].param_groups for p in g["params"]}
    assert decays["net.3.weight"] == 5.0e-4 and decays["net.3.bias"] == 0.0, "decay groups survive the split"


def test_a_pattern_that_matches_nothing_is_refused():
    with pytest.raises(ConfigError, match="model.freeze"):
        fit("--model.freeze=[net.9]", run_stage=False)


def test_warm_start_with_a_new_head_for_another_class_count(tmp_path):
    source = build_arch("mlp", 10, (1, 8, 8), "relu", {"depth": 2, "width": 32})
    torch.save(source.state_dict(), tmp_path / "weights.pt")
    target = build_arch("mlp", 3, (1, 8, 8), "relu", {"depth": 2, "width": 32})
    head = target[-1].weight.detach().clone()
    with pytest.raises(ConfigError, match="shape mismatch"):
        load_weights(target, str(tmp_path / "weights.pt"))
    load_weights(target, str(tmp_path / "weights.pt"), new_head=True)
    assert torch.equal(target[1].weight, source[1].weight) and torch.equal(target[3].bias, source[3].bias)
    assert torch.equal(target[-1].weight, head) and target[-1].out_features == 3
