"""Optimizers, schedules and lr scaling as units: closed forms, formulas, loss going down."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainkit.data.datasets import DATASETS
from trainkit.errors import ConfigError
from trainkit.optim.configure import check_schedule
from trainkit.optim.optimizers import OPTIMIZERS, build_optimizer, check_optimizer, implementation_defaults
from trainkit.optim.scaling import GlobalBatch, check_lr_scaling, plan
from trainkit.optim.schedules import SCHEDULES, with_warmup

PI = math.pi


def half_cos(x: float) -> float:
    return 0.5 * (1 + math.cos(PI * x))


# name -> (arguments, [(t, closed-form factor)])
CLOSED_FORMS = {
    "constant": ({}, [(0, 1.0), (123.4, 1.0)]),
    "step": ({"step_size": 3, "gamma": 0.5}, [(0, 1.0), (2.99, 1.0), (3, 0.5), (7, 0.25)]),
    "multistep": ({"milestones": [5, 2], "gamma": 0.1}, [(1.9, 1.0), (2, 0.1), (4, 0.1), (5, 0.01), (50, 0.01)]),
    "exponential": ({"gamma": 0.9}, [(0, 1.0), (1, 0.9), (2.5, 0.9**2.5)]),
    "inverse_time": ({"k": 0.5}, [(0, 1.0), (2, 0.5), (6, 0.25)]),
    "polynomial": ({"total": 10, "power": 2.0, "end_factor": 0.1}, [(0, 1.0), (5, 0.1 + 0.9 * 0.25), (10, 0.1), (20, 0.1)]),
    "cosine": ({"total": 8}, [(0, 1.0), (2, half_cos(0.25)), (4, 0.5), (8, 0.0), (9, 0.0)]),
    "cosine_restarts": ({"T_0": 4, "T_mult": 2}, [(0, 1.0), (2, 0.5), (4, 1.0), (8, 0.5), (12, 1.0), (13, half_cos(1 / 16))]),
    "cyclic": (
        {"step_size_up": 2, "step_size_down": 4, "min_factor": 0.2, "mode": "triangular2"},
        [(0, 0.2), (1, 0.6), (2, 1.0), (4, 0.6), (6, 0.2), (8, 0.2 + 0.8 * 0.5), (14, 0.2 + 0.8 * 0.25)],
    ),
    "onecycle": (
        {"total": 10, "pct_start": 0.2, "div_factor": 10, "final_div_factor": 100},
        [(0, 0.1), (1, 1.0 + (0.1 - 1.0) * half_cos(0.5)), (2, 1.0), (6, 1e-3 + (1 - 1e-3) * 0.5), (10, 1e-3)],
    ),
}


def test_every_pure_schedule_has_a_closed_form_case():
    assert set(CLOSED_FORMS) == set(SCHEDULES.names()) - {"plateau"}


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_schedule_equals_its_closed_form(name):
    args, cases = CLOSED_FORMS[name]
    factor = SCHEDULES.get(name)(**args)
    for t, expected in cases:
        assert factor(t) == pytest.approx(expected, abs=1e-12), (name, t)


def test_cyclic_modes_triangular_and_exp_range():
    tri = SCHEDULES.get("cyclic")(step_size_up=2, min_factor=0.0)
    assert [tri(t) for t in (0, 1, 2, 3, 4, 5, 6)] == [0.0, 0.5, 1.0, 0.5, 0.0, 0.5, 1.0]
    exp = SCHEDULES.get("cyclic")(step_size_up=2, min_factor=0.0, mode="exp_range", gamma=0.9)
    assert exp(6) == pytest.approx(0.9**6) and exp(1) == pytest.approx(0.5 * 0.9)


def test_cosine_restarts_restart_at_the_cycle_boundaries():
    T_0, T_mult = 5, 3
    f = SCHEDULES.get("cosine_restarts")(T_0=T_0, T_mult=T_mult)
    boundaries = [0, T_0, T_0 + T_0 * T_mult, T_0 + T_0 * T_mult + T_0 * T_mult**2]
    for b in boundaries:
        assert f(b) == 1.0, b
        if b:
            assert f(b - 1e-9) < 1e-6, "the lr reaches the bottom just before a restart"
    assert f(T_0 / 2) == pytest.approx(0.5) and f(T_0 + T_0 * T_mult / 2) == pytest.approx(0.5)


@pytest.mark.parametrize("name", sorted(CLOSED_FORMS))
def test_warmup_starts_near_zero_and_reaches_the_schedule_exactly_at_its_end(name):
    args, _ = CLOSED_FORMS[name]
    factor = SCHEDULES.get(name)(**args)
    W = 20
    f = with_warmup(factor, W)
    assert f(0) == pytest.approx(factor(0) / (W + 1)), "near zero at the first step"
    ramp = [f(s) for s in range(W + 1)]
    assert all(b > a for a, b in zip(ramp, ramp[1:])), "rises linearly"
    assert f(W) == factor(0), "exactly the schedule's start at the end of warmup"
    assert f(W + 7) == factor(7), "the schedule's clock starts when warmup ends"


def test_plateau_and_bad_schedules_are_refused_with_the_key():
    assert check_schedule({"name": "plateau", "monitor": "val/acc", "patience": 2})["unit"] == "epoch"
    for spec, words in [
        ({"name": "cosin"}, ["model.schedule.name", "did you mean 'cosine'"]),
        ({"name": "step"}, ["model.schedule", "step_size"]),
        ({"name": "step", "step_size": 0}, ["model.schedule", "step_size must be > 0"]),
        ({"name": "cosine", "T_0": 3}, ["model.schedule", "'T_0'", "end_factor"]),
        ({"name": "cosine", "unit": "epochs"}, ["model.schedule.unit", "epoch or step"]),
        ({"name": "plateau", "monitor": "val/accuracy"}, ["model.schedule.monitor", "val/acc"]),
        ({"name": "plateau", "patiense": 3}, ["model.schedule", "'patiense'", "patience"]),
        ({"name": "constant", "warmup_epochs": -1}, ["model.schedule.warmup_epochs"]),
    ]:
        with pytest.raises(ConfigError) as e:
            check_schedule(spec)
        for word in words:
            assert word in str(e.value), (spec, str(e.value))


def test_lr_scaling_plan_and_validation():
    assert plan(GlobalBatch(128, 8, 1, 1), 0.1, "linear", 256) == (
        pytest.approx(0.4),
        "global batch 1024 = 128 x 8 devices x 1 node x 1 accum; lr 0.1 -> 0.4 (linear, base 256)",
    )
    scaled, line = plan(GlobalBatch(32, 4, 2, 2), 0.1, "sqrt", 128)
    assert scaled == pytest.approx(0.2) and line.startswith("global batch 512 = 32 x 4 devices x 2 nodes x 2 accum")
    for spec, key in [({"rule": "linaer"}, "model.lr_scaling.rule"), ({"base_batch_size": 0}, "base_batch_size"),
                      ({"rule": "linear", "base": 256}, "'base'")]:
        with pytest.raises(ConfigError, match=key):
            check_lr_scaling(spec)


# per-optimizer lr for logistic regression; lookahead wraps adam
LOGREG_LR = {"sgd": 0.1, "adagrad": 0.1, "rmsprop": 0.01, "adam": 0.01, "adamw": 0.01, "nadam": 0.01, "radam": 0.03,
             "lamb": 0.01, "lars": 1.0, "lion": 0.003, "ranger": 0.1, "lookahead": 0.01}


@pytest.fixture(scope="module")
def breast_cancer() -> tuple[torch.Tensor, torch.Tensor]:
    d = DATASETS.get("breast_cancer")()
    x = (d.x - d.x.mean(0)) / d.x.std(0)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(d.y)


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_fits_logistic_regression_on_breast_cancer(name, breast_cancer):
    x, y = breast_cancer
    torch.manual_seed(0)
    model = torch.nn.Linear(x.shape[1], 2)
    spec = {"name": name, "lr": LOGREG_LR[name], **({"base": "adam"} if name == "lookahead" else {})}
    opt = build_optimizer(model.parameters(), spec)
    start = F.cross_entropy(model(x), y).item()
    for _ in range(50):  # full-batch steps
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    end = F.cross_entropy(model(x), y).item()
    assert start > 0.6 and end < 0.35, (name, start, end)
    assert ((model(x).argmax(1) == y).float().mean() > 0.9), name


def test_lookahead_slow_weights_move_every_k_steps_by_the_interpolation_formula():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5))
    lr, k, alpha = 0.1, 3, 0.4
    opt = build_optimizer([p], {"name": "lookahead", "base": "sgd", "lr": lr, "k": k, "alpha": alpha})
    slow = p.detach().clone()
    target = torch.randn(5)
    for step in range(1, 3 * k + 1):
        opt.zero_grad()
        ((p - target) ** 2).sum().backward()
        fast = p.detach() - lr * p.grad  # plain SGD: the fast weights' step
        opt.step()
        state_slow = opt.state[p]["slow_params"]
        if step % k:
            assert torch.equal(state_slow, slow), f"slow weights moved at step {step}"
            assert torch.allclose(p.detach(), fast), "fast weights take the base optimizer's step"
        else:
            expected = slow + alpha * (fast - slow)
            assert torch.allclose(state_slow, expected, atol=1e-6), step
            assert torch.allclose(p.detach(), expected, atol=1e-6), "fast weights restart from the slow ones"
            slow = state_slow.clone()


def test_fused_where_torch_offers_it_and_recipe_choice_wins():
    assert implementation_defaults("sgd", {}, "cuda") == {"fused": True}
    assert implementation_defaults("lookahead", {"base": "adam"}, "cuda") == {"base": "adam", "fused": True}
    assert implementation_defaults("nadam", {}, "cuda") == {}, "no fused NAdam: torch picks foreach itself"
    assert implementation_defaults("adam", {"foreach": False}, "cuda") == {"foreach": False}
    p = torch.nn.Parameter(torch.zeros(2))
    assert build_optimizer([p], {"name": "adamw", "foreach": True}).defaults["foreach"] is True
    assert build_optimizer([p], {"name": "adamw"}).defaults["fused"] is None, "CPU: torch's default"


def test_optimizer_arguments_are_checked_for_library_optimizers_too():
    with pytest.raises(ConfigError, match="'momentun'; did you mean 'momentum'"):
        check_optimizer({"name": "lars", "momentun": 0.9})
    with pytest.raises(ConfigError, match="lookahead's base"):
        check_optimizer({"name": "lookahead", "base": "adam", "momentum": 0.9})
    with pytest.raises(ConfigError, match="did you mean 'adamw'"):
        check_optimizer({"name": "lookahead", "base": "adamww"})
