"""Evaluation plots of ``trainkit test``: confusion matrix, ROC and precision-recall curves.

They are drawn from the tested model's probabilities on the test split, saved as PNG in the
run dir (``confusion_matrix.png``, ``roc.png``, ``pr.png``) and logged to W&B as native plots
(``wandb.plot.confusion_matrix``, ``roc_curve``, ``pr_curve``) and as the same images.
Multiclass curves are one-vs-rest, one line per class; binary ones are those of the positive
class (``model.positive_class``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

PLOTS = ("confusion_matrix", "roc", "pr")


def predict_split(model: torch.nn.Module, loader: Any) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``(N, C)`` and labels ``(N,)`` of every batch of ``loader``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    probs, labels = [], []
    with torch.no_grad():
        for x, y, *_ in loader:
            probs.append(model(x.to(device)).float().softmax(dim=-1).cpu())
            labels.append(y)
    model.train(was_training)
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()


def save_plots(out: Path, probs: np.ndarray, labels: np.ndarray, classes: list[str], positive: int = 1) -> dict[str, Path]:
    """Write the three PNGs into ``out``; returns their paths by plot name (binary: the curves
    of class ``positive``)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on clusters and CI
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay

    n = probs.shape[1]
    paths = {name: out / f"{name}.png" for name in PLOTS}
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * max(n, 4), 0.6 + 0.6 * max(n, 4)))
    ConfusionMatrixDisplay.from_predictions(labels, probs.argmax(1), labels=list(range(n)), display_labels=classes, ax=ax, colorbar=False)
    ax.set_title("confusion matrix (test split)")
    fig.tight_layout()
    fig.savefig(paths["confusion_matrix"], dpi=100)
    plt.close(fig)
    # binary: the positive class only; multiclass: one-vs-rest per class
    shown = [positive] if n == 2 else list(range(n))
    for name, display, title in (("roc", RocCurveDisplay, "ROC"), ("pr", PrecisionRecallDisplay, "precision-recall")):
        fig, ax = plt.subplots(figsize=(6, 5))
        for c in shown:
            if (labels == c).any():
                display.from_predictions(labels == c, probs[:, c], name=f"class {classes[c]}", ax=ax)
        ax.set_title(f"{title} (test split{', one-vs-rest' if n > 2 else ''})")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(paths[name], dpi=100)
        plt.close(fig)
    return paths


def evaluation_plots(trainer: Any, model: torch.nn.Module, datamodule: Any, run_dir: Path) -> dict[str, str]:
    """Plots of the tested model on the test split, in the run dir and W&B; rank zero only.

    Returns ``{"test/plot_<name>": path}`` for the CLI to print.
    """
    if not trainer.is_global_zero:
        return {}
    probs, labels = predict_split(model, datamodule.test_dataloader())
    classes = [str(c) for c in datamodule.data.classes]
    positive = getattr(model, "positive_class", 1)  # model.positive_class (binary tasks)
    paths = save_plots(run_dir, probs, labels, classes, positive)
    _log_wandb(trainer, probs, labels, classes, paths, positive)
    return {f"test/plot_{name}": str(path) for name, path in paths.items()}


def _log_wandb(trainer: Any, probs: np.ndarray, labels: np.ndarray, classes: list[str], paths: dict[str, Path],
               positive: int = 1) -> None:
    from lightning.pytorch.loggers import WandbLogger

    loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
    if not loggers:
        return
    import wandb

    from sklearn.metrics import precision_recall_curve, roc_curve

    # wandb.plot.roc_curve/pr_curve need pandas; the same curves as line series do not
    shown = [positive] if len(classes) == 2 else [c for c in range(len(classes)) if (labels == c).any()]
    roc = [roc_curve(labels == c, probs[:, c])[:2] for c in shown]
    pr = [precision_recall_curve(labels == c, probs[:, c])[:2][::-1] for c in shown]
    keys = [f"class {classes[c]}" for c in shown]
    records = {
        "test/confusion_matrix": wandb.plot.confusion_matrix(probs=probs, y_true=labels.tolist(), class_names=classes),
        "test/roc": wandb.plot.line_series([x.tolist() for x, _ in roc], [y.tolist() for _, y in roc], keys, "ROC", "false positive rate"),
        "test/pr": wandb.plot.line_series([x.tolist() for x, _ in pr], [y.tolist() for _, y in pr], keys, "precision-recall", "recall"),
        **{f"test/plot/{name}": wandb.Image(str(path)) for name, path in paths.items()},
    }
    for lg in loggers:
        lg.experiment.log(records)
