"""Magnitude pruning (exact sparsity, masks through training and checkpoints), snapshot
ensembles, and the lottery ticket on the digits MLP."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import DEFAULT_RECIPE, QUIET

from trainkit.cli import main
from trainkit.ensemble import ensemble_metrics
from trainkit.commands.lottery import lottery
from trainkit.models import build_arch
from trainkit.nn.prune import prunable, prune_to, sparsity
from trainkit.runner import TrainkitCLI, finish_wandb
from wandb_records import read_run
from trainkit.callbacks.snapshots import snapshot_paths

FIT = ["--config", str(DEFAULT_RECIPE), "--data.num_workers=0", "--trainer.logger=false", *QUIET]


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_pruning_reaches_exactly_the_target_sparsity(scope):
    net = build_arch("mlp", 10, (1, 8, 8), "relu", {"depth": 2, "width": 33})
    weights = [m.weight.detach().abs().clone() for m, _ in prunable(net)]
    for target in (0.3, 0.8):  # iterative: the second step prunes among the survivors
        prune_to(net, target, scope)
        masks = [m.weight_mask for m, _ in prunable(net)]
        if scope == "global":
            total = sum(m.numel() for m in masks)
            assert sum(int((m == 0).sum()) for m in masks) == round(target * total)
            # the survivors are the largest magnitudes overall
            alive = torch.cat([w[m.bool()] for w, m in zip(weights, masks)])
            dead = torch.cat([w[~m.bool()] for w, m in zip(weights, masks)])
            assert alive.min() >= dead.max()
        else:
            assert [int((m == 0).sum()) for m in masks] == [round(target * m.numel()) for m in masks]
    assert torch.equal(net[1].weight, net[1].weight_orig * net[1].weight_mask)


def test_the_mask_survives_training_checkpoints_and_trainkit_test(capsys):
    args = ["--model.prune={sparsity: 0.8, epochs: [0, 1]}", "--trainer.max_epochs=3", "--run.name=p"]
    cli = TrainkitCLI(["fit", *FIT, *args, "--trainer.limit_val_batches=2"])
    state = torch.load(cli.run_dir.checkpoints / "last.ckpt", weights_only=True)["state_dict"]
    masks = {k: v for k, v in state.items() if k.endswith("weight_mask")}
    assert len(masks) == 4
    total = sum(m.numel() for m in masks.values())
    assert sum(int((m == 0).sum()) for m in masks.values()) == round(0.8 * total)
    for k, mask in masks.items():  # trained after pruning, the pruned weights are still exactly zero
        weight = state[k.replace("_mask", "_orig")] * mask
        assert torch.all(weight[mask == 0] == 0)
    test = TrainkitCLI(["test", *FIT, "--run.name=p", "--ckpt_path=last"])
    assert sparsity(test.model.net) == pytest.approx(0.8, abs=1 / total)
    for k, mask in masks.items():
        assert torch.equal(test.model.state_dict()[k], mask)
    assert test.result.metrics["test/acc"] > 0.8


def test_snapshot_ensemble_is_at_least_as_accurate_as_its_members_on_average():
    args = ["--model.schedule={name: cosine_restarts, T_0: 1}", "--trainer.max_epochs=3", "--run.name=s"]
    cli = TrainkitCLI(["fit", *FIT, *args])
    paths = snapshot_paths(cli.run_dir.checkpoints)
    assert [p.name for p in paths] == ["snapshot-1.ckpt", "snapshot-2.ckpt", "snapshot-3.ckpt"]
    m = ensemble_metrics(cli.model, paths, cli.datamodule.val_dataloader(), "val", 10)
    members = [m[f"val/snapshot-{k}/acc"] for k in (1, 2, 3)]
    assert len(set(members)) > 1, "the snapshots are different models"
    assert m["val/acc"] >= sum(members) / 3, m
    # with W&B on, as users run it: the ensemble and its members are logged like a plain test
    # (the metrics.json check alone never saw that nothing reached W&B and no plot was drawn)
    on = [a for a in FIT if a != "--trainer.logger=false"]
    assert main(["test", *on, "--run.name=s", "--ensemble=snapshots"]) == 0
    finish_wandb()
    out = capsys_free_metrics(cli)
    assert {"test/acc", "test/snapshot-1/acc", "test/snapshot-3/loss"} <= set(out)
    run_dir = cli.run_dir.path
    for folder in (run_dir, *(run_dir / "ensemble" / f"snapshot-{k}" for k in (1, 2, 3))):
        for name in ("confusion_matrix", "roc", "pr"):
            assert (folder / f"{name}.png").stat().st_size > 10_000, folder
    records = read_run(run_dir)
    logged = {k: v for row in records["history"] for k, v in row.items()}
    assert logged["test/acc"] == pytest.approx(out["test/acc"])
    assert logged["test/snapshot-2/acc"] == pytest.approx(out["test/snapshot-2/acc"])
    images = {"test/plot/roc", "test/snapshot-1/plot/pr", "test/snapshot-3/plot/confusion_matrix"}
    assert all(logged[f"{k}/_type"] == "image-file" for k in images), sorted(logged)
    assert {"test/confusion_matrix_table/_type", "test/roc_table/_type", "test/snapshot-2/pr_table/_type"} <= set(logged)


def capsys_free_metrics(cli: TrainkitCLI) -> dict:
    import json

    return json.loads((cli.run_dir.path / "metrics.json").read_text())


def test_a_rewound_ticket_at_80_percent_sparsity_stays_within_2_points_of_dense():
    rows = lottery([*FIT, "--trainer.max_epochs=6", "--run.name=lt", "--model.prune={sparsity: 0.8, rounds: 1}"])
    dense, ticket = rows
    assert dense["sparsity"] == 0.0 and ticket["sparsity"] == pytest.approx(0.8, abs=1e-4)
    assert ticket["val/acc"] >= dense["val/acc"] - 0.02, rows


def test_pruning_after_the_best_epoch_reports_and_tests_the_pruned_model(capsys):
    # the recipe's defaults (W&B offline, 2 workers); 97% sparsity at the last epoch is worse on
    # val than the dense epochs before it, which used to leave best.ckpt dense: fit crashed
    # loading it into the pruned model, or `test` reported the dense model
    recipe = ["--config", str(DEFAULT_RECIPE.parent / "digits_lottery.yaml"), "--run.name=late"]
    small = ["--model.arch_args={depth: 2, width: 64}"]
    args = [*small, "--trainer.max_epochs=3", "--model.prune={sparsity: 0.97, epochs: [2]}",
            "--early_stopping={monitor: val/acc, patience: 1}"]
    assert main(["fit", *recipe, *args]) == 0
    with Path("runs/digits_lottery/late/metrics.csv").open() as f:
        val = [float(r["val/acc"]) for r in csv.DictReader(f) if r.get("val/acc")]
    assert len(val) == 3 and max(val[:2]) > val[2], "the case: the dense epochs rank higher than the pruned one"
    metrics = json.loads(open("runs/digits_lottery/late/metrics.json").read())
    assert metrics["fit/best_epoch"] == 3, "best.ckpt is ranked among the pruned model's epochs"
    # early stopping judges the pruned model afresh too: no "did not improve" at its first epoch
    assert metrics["fit/stop_reason"] == "epoch budget" and metrics["fit/es_best_epoch"] == 3, metrics
    best = torch.load("runs/digits_lottery/late/checkpoints/best.ckpt", weights_only=True)["state_dict"]
    masks = [v for k, v in best.items() if k.endswith("weight_mask")]
    total = sum(m.numel() for m in masks)
    assert len(masks) == 3 and sum(int((m == 0).sum()) for m in masks) == round(0.97 * total)
    tested = TrainkitCLI(["test", *recipe, *small])  # `trainkit test` tests the pruned model
    assert sparsity(tested.model.net) == pytest.approx(0.97, abs=1 / total)
    assert tested.result.extra["test/checkpoint"].endswith("best.ckpt") and tested.result.metrics["test/acc"] > 0.3


def test_checkpoints_of_either_kind_load_into_models_of_either_kind():
    from trainkit.module import Classifier

    dense, pruned = Classifier(arch_args={"depth": 2, "width": 32}), Classifier(arch_args={"depth": 2, "width": 32})
    prune_to(pruned.net, 0.5)
    for source, target in ((dense, pruned), (pruned, dense), (pruned, Classifier(arch_args={"depth": 2, "width": 32}))):
        checkpoint = {"state_dict": {k: v.clone() for k, v in source.state_dict().items()}}
        target.on_load_checkpoint(checkpoint)  # as Lightning does before load_state_dict
        target.load_state_dict(checkpoint["state_dict"])  # strict: the layouts match
        x = torch.randn(5, 1, 8, 8)
        assert torch.equal(target.eval()(x), source.eval()(x))
        assert sparsity(target.net) == sparsity(source.net)
