"""Metrics: names per stage, values against scikit-learn, and DDP sync equal to one process;
binned AUROC (``model.auroc_thresholds``): constant state, close to the exact value."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import DEFAULT_RECIPE, QUIET
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from trainkit.cli import main
from trainkit.errors import ConfigError
from trainkit.metrics import StageMetrics, auroc_grid, make_metrics, scores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_predictions(num_classes: int, n: int = 203, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, (n,), generator=g)
    # informative but imperfect logits
    logits = torch.randn(n, num_classes, generator=g) + 1.5 * torch.nn.functional.one_hot(target, num_classes)
    losses = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    return {"logits": logits, "target": target, "losses": losses}


def single_process(data: dict[str, torch.Tensor], chunk: int = 50,
                   auroc_thresholds: int | None = None) -> dict[str, float]:
    """trainkit's stage metrics fed batch by batch (16 samples a step), as an epoch does."""
    metrics = StageMetrics(data["logits"].shape[1], "val", chunk=chunk, auroc_thresholds=auroc_thresholds)
    for step in torch.arange(len(data["target"])).split(16):
        metrics.update(data["logits"][step], data["target"][step], data["losses"][step].mean())
    return {k: float(v) for k, v in metrics.compute().items()}


def test_chunked_updates_equal_one_update_per_step():
    data = fake_predictions(10)
    # chunk 1: torchmetrics updated every step; 10**6: once, at compute
    assert single_process(data, chunk=1) == pytest.approx(single_process(data, chunk=10**6), abs=1e-6)


@pytest.mark.parametrize("num_classes", [2, 10])
def test_metrics_match_sklearn(num_classes):
    data = fake_predictions(num_classes)
    got = single_process(data)
    y, probs = data["target"].numpy(), data["logits"].softmax(-1).numpy()
    pred = probs.argmax(1)
    avg = "binary" if num_classes == 2 else "macro"
    assert got["val/acc"] == pytest.approx(accuracy_score(y, pred), abs=1e-6)
    assert got["val/precision"] == pytest.approx(precision_score(y, pred, average=avg), abs=1e-5)
    assert got["val/recall"] == pytest.approx(recall_score(y, pred, average=avg), abs=1e-5)
    assert got["val/f1"] == pytest.approx(f1_score(y, pred, average=avg), abs=1e-5)
    auc = roc_auc_score(y, probs[:, 1]) if num_classes == 2 else roc_auc_score(y, probs, multi_class="ovr")
    assert got["val/auroc"] == pytest.approx(auc, abs=1e-4)
    assert got["val/loss"] == pytest.approx(float(data["losses"].mean()), abs=1e-6)


# one case in the default suite, the others (13 s each) in CI's slow pass
@pytest.mark.parametrize("num_classes, auroc_thresholds", [
    (10, None), pytest.param(2, None, marks=pytest.mark.slow), pytest.param(10, 100, marks=pytest.mark.slow)])
def test_two_process_gloo_metrics_equal_single_process(num_classes, auroc_thresholds, tmp_path):
    from ddp_workers import metrics_worker

    data = fake_predictions(num_classes)
    torch.save(data, tmp_path / "data.pt")
    out = tmp_path / "ddp.json"
    args = (2, free_port(), str(tmp_path / "data.pt"), str(out), auroc_thresholds)
    mp.spawn(metrics_worker, args=args, nprocs=2, join=True)
    ddp = json.loads(out.read_text())
    single = single_process(data, auroc_thresholds=auroc_thresholds)
    assert ddp.keys() == single.keys()
    for key in single:
        assert ddp[key] == pytest.approx(single[key], abs=1e-6), key


def state_numel(metrics) -> int:
    """Elements held by the states of every metric of a collection (list states: all their tensors)."""
    total = 0
    for metric in metrics.values():
        for value in metric.metric_state.values():
            total += sum(t.numel() for t in value) if isinstance(value, list) else value.numel()
    return total


@pytest.mark.parametrize("num_classes", [2, 10])
def test_binned_auroc_state_does_not_grow_with_samples(num_classes):
    g = torch.Generator().manual_seed(0)
    sizes: dict[object, list[int]] = {}
    for thresholds in (None, 200):
        metrics = make_metrics(num_classes, "val", auroc_thresholds=thresholds)
        sizes[thresholds] = []
        for step in range(100):  # 100 batches of 1,000: sizes after 1,000 and 100,000 samples
            metrics.update(scores(torch.randn(1000, num_classes, generator=g)),
                           torch.randint(0, num_classes, (1000,), generator=g))
            if step in (0, 99):
                sizes[thresholds].append(state_numel(metrics))
    assert sizes[200][0] == sizes[200][1], sizes
    assert sizes[None][1] > 50 * sizes[None][0], sizes  # exact: every score is kept


def same_bin_bound(score: torch.Tensor, positive: torch.Tensor, thresholds: int) -> float:
    """How far binned AUROC can be from the exact one on these scores.

    Binned AUROC is the exact AUROC of the scores rounded down to the threshold grid: a
    (positive, negative) pair in different bins keeps its order, a pair in the same bin
    becomes a tie worth 1/2 instead of 0 or 1. So the two differ by at most half the fraction
    of (positive, negative) pairs that share a bin.
    """
    bins = torch.bucketize(score.contiguous(), auroc_grid(thresholds), right=True)
    pos = torch.bincount(bins[positive], minlength=thresholds + 1).double()
    neg = torch.bincount(bins[~positive], minlength=thresholds + 1).double()
    return float(0.5 * (pos * neg).sum() / (pos.sum() * neg.sum()))


@pytest.mark.parametrize("num_classes", [2, 10])
def test_binned_auroc_agrees_with_sklearn(num_classes):
    thresholds = 200
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, num_classes, (5000,), generator=g)
    logits = torch.randn(5000, num_classes, generator=g) + 1.5 * torch.nn.functional.one_hot(target, num_classes)
    probs = scores(logits)
    metrics = make_metrics(num_classes, "val", auroc_thresholds=thresholds)
    metrics.update(probs, target)
    binned = float(metrics.compute()["val/auroc"])
    if num_classes == 2:
        exact = roc_auc_score(target, probs)
        bound = same_bin_bound(probs, target == 1, thresholds)
    else:  # macro one-vs-rest: the mean of the per-class AUROCs, so the mean of their bounds
        exact = roc_auc_score(target, probs, multi_class="ovr")
        bound = sum(same_bin_bound(probs[:, c], target == c, thresholds) for c in range(num_classes)) / num_classes
    assert 0.6 < exact < 0.95, exact  # a problem where the AUROC is informative, not saturated
    assert bound < 1e-2, bound  # 200 thresholds resolve these scores to within 0.01
    assert abs(binned - exact) <= bound + 1e-6, (binned, exact, bound)


@pytest.mark.parametrize("value", [0, 1, -5, 2.5, True, "100"])
def test_bad_auroc_thresholds_name_the_key(value):
    with pytest.raises(ConfigError, match=r"model\.auroc_thresholds.*integer >= 2"):
        make_metrics(10, "val", auroc_thresholds=value)


def test_fit_with_binned_auroc_writes_val_auroc_close_to_exact():
    # after 1 epoch (val acc 0.57) 64% of the one-vs-rest scores lie below 0.01: 100 thresholds
    # even in [0, 1] put them in one bin and read 0.021 low; even in log-odds they do not
    args = ["fit", "--config", str(DEFAULT_RECIPE), "--trainer.max_epochs=1", "--data.loader=memory", *QUIET]
    assert main([*args, "--run.name=exact"]) == 0
    assert main([*args, "--run.name=binned", "--model.auroc_thresholds=100"]) == 0
    runs = Path("runs/digits_mlp")
    exact, binned = (json.loads((runs / n / "metrics.json").read_text())["val/auroc"] for n in ("exact", "binned"))
    assert 0.5 < exact < 1.0
    assert binned == pytest.approx(exact, abs=0.003), (binned, exact)


@pytest.mark.parametrize("positive", [0, 1])
def test_positive_class_is_the_class_binary_metrics_score(positive):
    data = fake_predictions(2)
    metrics = StageMetrics(2, "val", chunk=50, positive=positive)
    for step in torch.arange(len(data["target"])).split(16):
        metrics.update(data["logits"][step], data["target"][step], data["losses"][step].mean())
    got = {k: float(v) for k, v in metrics.compute().items()}
    y, probs = data["target"].numpy(), data["logits"].softmax(-1).numpy()
    pred = probs.argmax(1)
    assert got["val/precision"] == pytest.approx(precision_score(y, pred, pos_label=positive), abs=1e-5)
    assert got["val/recall"] == pytest.approx(recall_score(y, pred, pos_label=positive), abs=1e-5)
    assert got["val/f1"] == pytest.approx(f1_score(y, pred, pos_label=positive), abs=1e-5)
    assert got["val/auroc"] == pytest.approx(roc_auc_score(y == positive, probs[:, positive]), abs=1e-4)
    assert got["val/acc"] == pytest.approx(accuracy_score(y, pred), abs=1e-6)


@pytest.mark.parametrize("auroc_thresholds", [None, 50])
def test_metric_updates_and_flushes_read_nothing_on_the_host(auroc_thresholds):
    from host_reads import HostReads

    data = fake_predictions(10, n=400)
    metrics = StageMetrics(10, "val", chunk=64, auroc_thresholds=auroc_thresholds)
    with HostReads() as reads:
        reads.step = 1  # as inside a training step: the window is open
        for step in torch.arange(400).split(16):  # six flushes of 64 samples on the way
            metrics.update(data["logits"][step], data["target"][step], data["losses"][step].mean())
        reads.step = None
        computed = {k: float(v) for k, v in metrics.compute().items()}
    # no argument checks (validate_args) and no NaN check of the loss: what is left is
    # torchmetrics' range check of the AUROC's scores, a host read on CPU tensors only (a
    # torch.where on CUDA), once per flush; training flushes at the epoch's end with exact AUROC
    assert dict(reads.reads) == {1: {"__bool__": 6}}, reads.where
    assert all("normalize_logits_if_needed" in w for w in reads.where[1]), reads.where
    assert computed == pytest.approx(single_process(data, chunk=10**6, auroc_thresholds=auroc_thresholds), abs=1e-6)


def test_positive_class_by_name_on_breast_cancer_is_used_and_printed(capsys):
    recipe = DEFAULT_RECIPE.with_name("breast_cancer_mlp.yaml")
    args = ["--config", str(recipe), "--run.name=pos", *QUIET, "--trainer.max_epochs=2", "--model.positive_class=malignant",
            "--trainer.logger=false", "--data.num_workers=0"]
    assert main(["fit", *args]) == 0
    out = capsys.readouterr().out
    assert "fit/positive_class: malignant (index 0)" in out
    metrics = json.loads(Path("runs/breast_cancer_mlp/pos/metrics.json").read_text())
    # fit reports best.ckpt on the val split: recompute its precision for class 0 by hand
    from trainkit.runner import TrainkitCLI

    cli = TrainkitCLI(["validate", *args], run_stage=False)
    state = torch.load("runs/breast_cancer_mlp/pos/checkpoints/best.ckpt", weights_only=True)["state_dict"]
    cli.model.load_state_dict(state)
    cli.model.eval()
    x, y = cli.datamodule.splits["val"].tensors
    with torch.no_grad():
        pred = cli.model(x).argmax(1).numpy()
    assert metrics["val/precision"] == pytest.approx(precision_score(y.numpy(), pred, pos_label=0), abs=1e-5)
    assert metrics["val/recall"] == pytest.approx(recall_score(y.numpy(), pred, pos_label=0), abs=1e-5)


@pytest.mark.parametrize("recipe, value, words", [
    ("breast_cancer_mlp.yaml", "cat", "unknown class 'cat' (valid: 'malignant', 'benign', 0, 1)"),
    ("digits_mlp.yaml", "1", "is for binary tasks; this data has 10 classes"),
])
def test_bad_positive_class_names_the_key(recipe, value, words, capsys):
    code = main(["fit", "--config", str(DEFAULT_RECIPE.with_name(recipe)), f"--model.positive_class={value}", *QUIET])
    assert code == 2
    assert f"model.positive_class: {words}" in capsys.readouterr().err
    assert not Path("runs").exists()
