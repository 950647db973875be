"""torchmetrics collections, one per stage, logged as ``<stage>/<metric>``.

Metrics accumulate state on every step and are computed (and, under DDP, synced across
ranks) once per epoch by torchmetrics, so per-step logging never waits on other ranks.
"""

from __future__ import annotations

import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import AUROC, Accuracy, F1Score, Precision, Recall

STAGES = ("train", "val", "test")
METRIC_NAMES = ("loss", "acc", "precision", "recall", "f1", "auroc")  # logged as <stage>/<name>


def make_metrics(num_classes: int, stage: str) -> MetricCollection:
    """The metrics of one stage: ``acc``, ``precision``, ``recall``, ``f1``, ``auroc``.

    Binary problems (``num_classes == 2``) use the positive class (index 1); multiclass
    problems use macro averages, and one-vs-rest AUROC. Feed it with :func:`scores`.

    >>> m = make_metrics(3, "val")
    >>> sorted(m.keys())
    ['val/acc', 'val/auroc', 'val/f1', 'val/precision', 'val/recall']
    """
    if num_classes == 2:
        kw: dict = {"task": "binary"}
    else:
        kw = {"task": "multiclass", "num_classes": num_classes, "average": "macro"}
    return MetricCollection(
        {
            # accuracy is the plain fraction of correct predictions (micro), whatever the task
            "acc": Accuracy(**{**kw, "average": "micro"} if num_classes != 2 else kw),
            "precision": Precision(**kw),
            "recall": Recall(**kw),
            "f1": F1Score(**kw),
            "auroc": AUROC(**kw),
        },
        prefix=f"{stage}/",
    )


def scores(logits: torch.Tensor) -> torch.Tensor:
    """What the metrics take: class probabilities, or the positive-class probability if binary."""
    probs = logits.detach().float().softmax(dim=-1)
    return probs[:, 1] if probs.shape[-1] == 2 else probs
