"""torchmetrics collections, one per stage, logged as ``<stage>/<metric>``.

Metrics accumulate state over an epoch and are computed (and, under DDP, synced across
ranks) once per epoch by torchmetrics, so per-step logging never waits on other ranks.
:class:`StageMetrics` feeds them in chunks: a torchmetrics update of the five metrics costs
~0.3 ms on a CPU, more than a small training step, so steps only keep their predictions.
The exact AUROC keeps every score of the epoch (and all-gathers them under DDP), so its
predictions are handed over once, at the epoch's end (flushing earlier would save no memory);
with ``auroc_thresholds`` it keeps a confusion matrix per threshold instead, whatever the
number of samples, and the predictions are flushed every ``chunk`` samples.

torchmetrics' argument checks (``validate_args``) read tensors on the host (``torch.unique``,
``isnan().any()``) at every update, and so does its MeanMetric; trainkit turns the checks off
and averages the loss itself (:class:`WeightedMean`), keeping their guarantees:
labels are checked to be integers in ``[0, num_classes)`` when the data are loaded
(``trainkit.data.datamodule.check_labels``) and the scores are softmax probabilities.
On CUDA, torchmetrics' confusion counts (``torch.bincount``) still wait for the device at a
flush: with exact AUROC that is the epoch's end; with ``auroc_thresholds``, every ``chunk``
samples (on the CPU, torchmetrics also range-checks binned-AUROC scores there, a host read
that on CUDA is a ``torch.where``).

Binary problems score the positive class (``positive_class``, index 1 unless the recipe's
``model.positive_class`` names another): precision, recall, F1, and the ROC/PR curves of
``trainkit test``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import AUROC, Accuracy, F1Score, Precision, Recall

from trainkit.errors import ConfigError

STAGES = ("train", "val", "test")
METRIC_NAMES = ("loss", "acc", "precision", "recall", "f1", "auroc")  # logged as <stage>/<name>


def check_auroc_thresholds(value: int | None) -> int | None:
    """Validate ``model.auroc_thresholds``: ``None`` (exact AUROC) or an integer >= 2.

    Raises:
        ConfigError: anything else, naming the key, the value and what is valid.
    """
    # bool is an int to Python, but `true` thresholds is a slip, not a count
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 2):
        return value
    raise ConfigError(f"must be null (exact AUROC) or an integer >= 2 (the number of thresholds "
                      f"of the binned AUROC), got {value!r}", "model.auroc_thresholds")


def auroc_grid(n: int) -> Tensor:
    """The ``n`` thresholds of the binned AUROC: 0, 1 and ``n - 2`` spaced evenly in log-odds.

    Softmax scores bunch near 0 and 1 (a one-vs-rest score of a 10-class model mostly lies
    below 0.01); thresholds even in [0, 1] lump those into one bin, whose pairs count as ties,
    and the AUROC reads low (0.947 vs 0.967 exact on digits after one epoch, 100 thresholds).
    Even in log-odds over [-12, 12] (scores 6e-6 to 1 - 6e-6), each bin is a constant ratio of
    odds wide: the same run reads 0.967.

    >>> grid = auroc_grid(5)
    >>> float(grid[0]), [round(float(torch.logit(t.double())), 2) for t in grid[1:-1]], float(grid[-1])
    (0.0, [-12.0, 0.0, 12.0], 1.0)
    """
    half = 12.0 if n > 3 else 0.0  # one inner threshold: 0.5
    inner = torch.sigmoid(torch.linspace(-half, half, n - 2, dtype=torch.float64))
    return torch.cat([torch.zeros(1, dtype=torch.float64), inner, torch.ones(1, dtype=torch.float64)]).float()


def check_positive_class(value: int | str | None, num_classes: int, classes: list[str] | None = None) -> int:
    """The index of ``model.positive_class`` (a class name or index; ``None``: 1) of a binary task.

    Raises:
        ConfigError: set for a task that is not binary, or not one of the classes.

    >>> check_positive_class(None, 2), check_positive_class("malignant", 2, ["malignant", "benign"])
    (1, 0)
    """
    key = "model.positive_class"
    if value is None:
        return 1
    if num_classes != 2:
        raise ConfigError(f"is for binary tasks; this data has {num_classes} classes (set it to null)", key)
    names = [str(c) for c in classes or []]
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"must be a class name or index, got {value!r}", key)
    if isinstance(value, int) and value in (0, 1):
        return value
    if isinstance(value, str) and value in names:
        return names.index(value)
    if isinstance(value, str) and value in ("0", "1"):
        return int(value)
    valid = ", ".join([*(repr(n) for n in names), "0", "1"])
    raise ConfigError(f"unknown class {value!r} (valid: {valid})", key)


def make_metrics(num_classes: int, stage: str, auroc_thresholds: int | None = None) -> MetricCollection:
    """The metrics of one stage: ``acc``, ``precision``, ``recall``, ``f1``, ``auroc``.

    Binary problems (``num_classes == 2``) score the positive class; multiclass problems use
    macro averages, and one-vs-rest AUROC. Feed it with :func:`scores` (and, binary,
    :func:`binary_target`). torchmetrics' argument checks are off (see the module docstring).

    Args:
        num_classes: number of classes (2: binary).
        stage: the name prefix, ``train``, ``val`` or ``test``.
        auroc_thresholds: ``None``: exact AUROC, whose state holds every score seen; ``N``:
            binned AUROC over the ``N`` thresholds of :func:`auroc_grid`, whose state is a
            fixed ``N x 2 x 2`` confusion matrix (per class if multiclass).

    Raises:
        ConfigError: ``auroc_thresholds`` neither ``None`` nor an integer >= 2.

    >>> m = make_metrics(3, "val")
    >>> sorted(m.keys())
    ['val/acc', 'val/auroc', 'val/f1', 'val/precision', 'val/recall']
    >>> make_metrics(3, "val", auroc_thresholds=100)["auroc"].confmat.shape
    torch.Size([100, 3, 2, 2])
    """
    check_auroc_thresholds(auroc_thresholds)
    if num_classes == 2:
        kw: dict = {"task": "binary", "validate_args": False}
    else:
        kw = {"task": "multiclass", "num_classes": num_classes, "average": "macro", "validate_args": False}
    return MetricCollection(
        {
            # accuracy is the plain fraction of correct predictions (micro), whatever the task
            "acc": Accuracy(**{**kw, "average": "micro"} if num_classes != 2 else kw),
            "precision": Precision(**kw),
            "recall": Recall(**kw),
            "f1": F1Score(**kw),
            "auroc": AUROC(**kw, thresholds=None if auroc_thresholds is None else auroc_grid(auroc_thresholds)),
        },
        prefix=f"{stage}/",
    )


def scores(logits: torch.Tensor, positive: int = 1) -> torch.Tensor:
    """What the metrics take: class probabilities, or the positive-class probability if binary."""
    probs = logits.detach().float().softmax(dim=-1)
    return probs[:, positive] if probs.shape[-1] == 2 else probs


def binary_target(target: torch.Tensor, positive: int = 1) -> torch.Tensor:
    """Binary labels with ``positive`` as 1 (the labels themselves when it is index 1)."""
    return target if positive == 1 else (target == positive).long()


def flush_chunk(auroc_thresholds: int | None, chunk: int = 4096) -> int | None:
    """Samples between flushes of :class:`StageMetrics` in training: ``None`` (the epoch's end)
    with the exact AUROC, whose state holds every score anyway, so flushing earlier would only
    add device syncs (torchmetrics' bincount on CUDA) to training steps; ``chunk`` when the
    binned AUROC keeps the state bounded.

    >>> flush_chunk(None), flush_chunk(100)
    (None, 4096)
    """
    return None if auroc_thresholds is None else chunk


class StageMetrics(nn.Module):
    """One stage's loss and metrics over an epoch, as ``{"<stage>/loss": ..., "<stage>/acc": ...}``.

    :meth:`update` keeps the step's detached logits, targets and loss; the torchmetrics
    objects are updated once per ``chunk`` samples and at :meth:`compute`, which syncs across
    ranks (torchmetrics) and resets for the next epoch. The values equal per-step updates.
    ``chunk=None`` flushes at :meth:`compute` only (see :func:`flush_chunk`).
    ``auroc_thresholds``: as in :func:`make_metrics`. ``positive``: a binary task's positive class.

    >>> m = StageMetrics(3, "val", chunk=2)
    >>> logits = torch.eye(3)[[0, 1, 2, 1]] * 2  # predicts 0, 1, 2, 1
    >>> target = torch.tensor([0, 1, 2, 2])
    >>> for i in range(4):  # one sample per step, a mean loss of i
    ...     m.update(logits[i : i + 1], target[i : i + 1], torch.tensor(float(i)))
    >>> out = m.compute()
    >>> float(out["val/acc"]), float(out["val/loss"]), sorted(out)
    (0.75, 1.5, ['val/acc', 'val/auroc', 'val/f1', 'val/loss', 'val/precision', 'val/recall'])
    """

    def __init__(self, num_classes: int, stage: str, chunk: int | None = 4096, auroc_thresholds: int | None = None,
                 positive: int = 1):
        super().__init__()
        self.stage, self.chunk = stage, chunk
        self.positive = positive if num_classes == 2 else None
        self.collection = make_metrics(num_classes, stage, auroc_thresholds)
        self.loss = WeightedMean()
        # the step's bookkeeping lives in a plain object: an nn.Module attribute write goes
        # through Module.__setattr__'s type checks, a few microseconds each, every step
        self._buf = _Pending()

    def update(self, logits: Tensor, target: Tensor, loss: Tensor) -> None:
        """Keep one step's predictions (``loss``: the step's mean loss)."""
        buf = self._buf
        buf.items.append((logits.detach(), target, loss.detach()))
        buf.count += target.numel()
        if self.chunk is not None and buf.count >= self.chunk:
            self._flush()

    def _flush(self) -> None:
        if not self._buf.items:
            return
        logits, targets, losses = zip(*self._buf.items)
        target = torch.cat(targets)
        if self.positive is not None:
            self.collection.update(scores(torch.cat(logits), self.positive), binary_target(target, self.positive))
        else:
            self.collection.update(scores(torch.cat(logits)), target)
        weights = torch.tensor([t.numel() for t in targets], dtype=torch.float32, device=losses[0].device)
        self.loss.update(torch.stack(losses).float(), weight=weights)
        self._buf.items, self._buf.count, self._buf.flushed = [], 0, True

    def compute(self) -> dict[str, Tensor]:
        """The epoch's values, synced across ranks; empty if this rank saw no step. Resets."""
        if not self._buf.items and not self._buf.flushed:
            return {}
        self._flush()
        out = {f"{self.stage}/loss": self.loss.compute(), **self.collection.compute()}
        self.reset()
        return out

    def reset(self) -> None:
        self.collection.reset()
        self.loss.reset()
        self._buf = _Pending()


class WeightedMean(Metric):
    """The weighted mean of the values fed, synced across ranks (sums of value x weight and of
    weights). torchmetrics' MeanMetric checks its inputs for NaN on the host at every update
    (and drops them); here a NaN loss stays NaN in the epoch's mean and nothing is read."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("weight", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, value: Tensor, weight: Tensor) -> None:
        self.total += (value.float() * weight.float()).sum()
        self.weight += weight.float().sum()

    def compute(self) -> Tensor:
        return self.total / self.weight


class _Pending:
    """A stage's predictions not yet handed to torchmetrics, and whether any were (this epoch)."""

    def __init__(self) -> None:
        self.items: list[tuple[Tensor, Tensor, Tensor]] = []
        self.count = 0
        self.flushed = False
