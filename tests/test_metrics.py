"""Metrics: names per stage, values against scikit-learn, and DDP sync equal to one process."""

from __future__ import annotations

import json
import socket

import pytest
import torch
import torch.multiprocessing as mp
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score
from trainkit.metrics import StageMetrics


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


def single_process(data: dict[str, torch.Tensor], chunk: int = 50) -> dict[str, float]:
    """trainkit's stage metrics fed batch by batch (16 samples a step), as an epoch does."""
    metrics = StageMetrics(data["logits"].shape[1], "val", chunk=chunk)
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


@pytest.mark.parametrize("num_classes", [2, 10])
def test_two_process_gloo_metrics_equal_single_process(num_classes, tmp_path):
    from ddp_workers import metrics_worker

    data = fake_predictions(num_classes)
    torch.save(data, tmp_path / "data.pt")
    out = tmp_path / "ddp.json"
    mp.spawn(metrics_worker, args=(2, free_port(), str(tmp_path / "data.pt"), str(out)), nprocs=2, join=True)
    ddp = json.loads(out.read_text())
    single = single_process(data)
    assert ddp.keys() == single.keys()
    for key in single:
        assert ddp[key] == pytest.approx(single[key], abs=1e-6), key
