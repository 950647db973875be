"""Evaluation plots of ``trainkit test``: confusion matrix, ROC and precision-recall curves.

They are drawn from the tested model's probabilities on the test split, saved as PNG in the
run dir (``confusion_matrix.png``, ``roc.png``, ``pr.png``) and logged to W&B as native plots
(``wandb.plot.confusion_matrix``, line series for ROC and PR) and as the same images.
Multiclass curves are one-vs-rest, one line per class named by its class; binary curves are
those of the positive class (``model.positive_class``, default index 1). Each curve's legend
entry carries its AUC (ROC) or
average precision (PR) to four digits, and a dashed line marks chance.

Any loadable checkpoint is evaluated to the end: outputs that are not finite (a model whose
weights blew up before a NaN stop) are counted and named in what ``test`` reports, left out of
the curves and the confusion matrix (each plot says how many), and a plot with nothing left
to draw says so instead of failing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

PLOTS = ("confusion_matrix", "roc", "pr")


def predict_split(model: torch.nn.Module, loader: Any, prepare: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``(N, C)`` and labels ``(N,)`` of every batch of ``loader``.

    ``prepare``: the data module's ``prepare_inputs`` (file sources' uint8 batches are
    standardized on the device, as in training)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    probs, labels = [], []
    with torch.no_grad():
        for x, y, *_ in loader:
            x = x.to(device)
            probs.append(model(prepare(x) if prepare else x).float().softmax(dim=-1).cpu())
            labels.append(y)
    model.train(was_training)
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()


def nonfinite_report(probs: np.ndarray, stage: str = "test") -> dict[str, Any]:
    """``{<stage>/nonfinite_outputs: count}``, plus a line naming the first such samples when
    there are any (the metrics of those rows mean nothing: their logits overflowed).

    >>> nonfinite_report(np.array([[0.5, 0.5], [np.nan, np.nan]]))["test/nonfinite_outputs"]
    1
    """
    bad = np.flatnonzero(~np.isfinite(probs).all(axis=1))
    out: dict[str, Any] = {f"{stage}/nonfinite_outputs": int(len(bad))}
    if len(bad):
        shown = ", ".join(str(i) for i in bad[:10]) + (", ..." if len(bad) > 10 else "")
        out[f"{stage}/warning"] = (
            f"{len(bad)} of {len(probs)} {stage} outputs are not finite (NaN or inf: the model's logits "
            f"overflow; samples {shown} of the split): the metrics above include those rows as computed "
            "(meaningless for them), the plots leave them out"
        )
    return out


def _curves(kind: str, probs: np.ndarray, labels: np.ndarray, shown: list[int]) -> list[tuple[int, np.ndarray, np.ndarray, float]]:
    """(class, x, y, area) per class with positives and negatives: ROC (fpr, tpr, AUC) or
    PR (recall, precision, average precision)."""
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    out = []
    for c in shown:
        positive = labels == c
        if not positive.any() or positive.all():
            continue  # a curve needs both: nothing to draw for this class
        if kind == "roc":
            fpr, tpr, _ = roc_curve(positive, probs[:, c])
            out.append((c, fpr, tpr, float(auc(fpr, tpr))))
        else:
            precision, recall, _ = precision_recall_curve(positive, probs[:, c])
            out.append((c, recall, precision, float(average_precision_score(positive, probs[:, c]))))
    return out


def shown_classes(n: int, positive: int = 1) -> list[int]:
    """Binary: the positive class; multiclass: every class, one-vs-rest."""
    return [positive] if n == 2 else list(range(n))


def save_plots(out: Path, probs: np.ndarray, labels: np.ndarray, classes: list[str], split: str = "test",
               title: str = "", positive: int = 1) -> dict[str, Path]:
    """Write the three PNGs into ``out``; returns their paths by plot name.

    Rows of ``probs`` that are not finite are left out (and counted in each plot's title).
    ``title`` names what is evaluated (e.g. ``ensemble of 3 snapshots``).
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on clusters and CI
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    n = probs.shape[1]
    finite = np.isfinite(probs).all(axis=1)
    dropped = int((~finite).sum())
    probs, labels = probs[finite], labels[finite]
    note = f"\n{dropped} of {len(finite)} outputs not finite, left out" if dropped else ""
    what = f"{split} split{', ' + title if title else ''}"
    paths = {name: out / f"{name}.png" for name in PLOTS}

    size = max(n, 4)
    fig, ax = plt.subplots(figsize=(1.4 + 0.6 * size, 1.0 + 0.6 * size))
    if len(labels):
        ConfusionMatrixDisplay.from_predictions(labels, probs.argmax(1), labels=list(range(n)), display_labels=classes,
                                                ax=ax, colorbar=False, cmap="Blues")
    else:
        _nothing(ax, dropped)
    ax.set_title(f"confusion matrix ({what}){note}")
    fig.tight_layout()
    fig.savefig(paths["confusion_matrix"], dpi=100)
    plt.close(fig)

    shown = shown_classes(n, positive)
    colors = plt.get_cmap("tab10" if len(shown) <= 10 else "tab20")
    for name, (xlabel, ylabel, area, head) in {
        "roc": ("false positive rate", "true positive rate", "AUC", "ROC"),
        "pr": ("recall", "precision", "AP", "precision-recall"),
    }.items():
        fig, ax = plt.subplots(figsize=(8.5, 5))
        curves = _curves(name, probs, labels, shown)
        for i, (c, x, y, value) in enumerate(curves):
            label = f"{'positive class ' if n == 2 else ''}{classes[c]} ({area} {value:.4f})"
            ax.plot(x, y, drawstyle="steps-post" if name == "pr" else "default", color=colors(i % colors.N),
                    linewidth=1.4, label=label)
        if curves:
            if name == "roc":
                ax.plot([0, 1], [0, 1], color="0.5", linestyle="--", linewidth=1, label="chance (AUC 0.5)")
            else:  # a random score's precision is the class's share of the split
                share = np.mean([float((labels == c).mean()) for c, *_ in curves])
                ax.axhline(share, color="0.5", linestyle="--", linewidth=1,
                           label=f"chance (class share {share:.2f}{', mean' if len(curves) > 1 else ''})")
            mean = np.mean([v for *_, v in curves])
            if name == "roc" and mean >= 0.9:
                _corner(ax, curves, colors)
            kind = "one-vs-rest per class" if n > 2 else f"positive class {classes[positive]}"
            ax.set_title(f"{head} ({what}; {kind}; {'mean ' if len(curves) > 1 else ''}{area} {mean:.4f}){note}")
            # outside the axes: a legend inside hides the curves near the corner it sits in
            ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False,
                      title="class" if n > 2 else None)
        else:
            _nothing(ax, dropped)
            ax.set_title(f"{head} ({what}){note}")
        ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(-0.01, 1.01), ylim=(-0.01, 1.02))
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(paths[name], dpi=100)
        plt.close(fig)
    return paths


def _corner(ax: Any, curves: list[tuple[int, np.ndarray, np.ndarray, float]], colors: Any) -> None:
    """A zoom on the top-left corner, where the curves of a good model crowd together (in the
    empty space below the chance line)."""
    from matplotlib.ticker import MaxNLocator

    right = 0.15
    bottom = min(float(np.interp(right, x, y)) for _, x, y, _ in curves)
    bottom = min(0.9, np.floor(bottom * 20) / 20)
    inset = ax.inset_axes([0.5, 0.06, 0.46, 0.42])
    for i, (_, x, y, _) in enumerate(curves):
        inset.plot(x, y, color=colors(i % colors.N), linewidth=1.2)
    inset.set(xlim=(0, right), ylim=(bottom, 1.002), title="zoom: top-left corner")
    inset.title.set_fontsize(8)
    inset.tick_params(labelsize=7)
    inset.xaxis.set_major_locator(MaxNLocator(4))
    inset.yaxis.set_major_locator(MaxNLocator(3))
    inset.grid(alpha=0.3)


def _nothing(ax: Any, dropped: int) -> None:
    why = f"all {dropped} outputs are not finite" if dropped else "no class has both positives and negatives"
    ax.text(0.5, 0.5, f"nothing to draw:\n{why}", ha="center", va="center", transform=ax.transAxes, fontsize=12)


def report_evaluation(trainer: Any, probs: np.ndarray, labels: np.ndarray, classes: list[str], out: Path,
                      prefix: str = "test", title: str = "", positive: int = 1) -> dict[str, Any]:
    """Plots of test-split probabilities in ``out`` and W&B, and the non-finite count; rank zero only.

    ``prefix`` names the model in metric and W&B keys (``test``, ``test/snapshot-1``).
    Returns ``{"<prefix>/plot_<name>": path, "<prefix>/nonfinite_outputs": n, ...}`` for the CLI.
    """
    if not trainer.is_global_zero:
        return {}
    out.mkdir(parents=True, exist_ok=True)
    paths = save_plots(out, probs, labels, classes, "test", title, positive)
    _log_wandb(trainer, probs, labels, classes, paths, prefix, positive)
    return {**nonfinite_report(probs, prefix), **{f"{prefix}/plot_{name}": str(path) for name, path in paths.items()}}


def evaluation_plots(trainer: Any, model: torch.nn.Module, datamodule: Any, run_dir: Path) -> dict[str, Any]:
    """:func:`report_evaluation` of the tested model on the test split, into the run dir."""
    if not trainer.is_global_zero:
        return {}
    probs, labels = predict_split(model, datamodule.test_dataloader(), datamodule.prepare_inputs)
    classes = [str(c) for c in datamodule.data.classes]
    return report_evaluation(trainer, probs, labels, classes, run_dir, positive=getattr(model, "positive_class", 1))


def _log_wandb(trainer: Any, probs: np.ndarray, labels: np.ndarray, classes: list[str], paths: dict[str, Path],
               prefix: str = "test", positive: int = 1) -> None:
    from lightning.pytorch.loggers import WandbLogger

    loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
    if not loggers:
        return
    import wandb

    finite = np.isfinite(probs).all(axis=1)
    probs, labels = probs[finite], labels[finite]
    shown = shown_classes(len(classes), positive)
    # wandb.plot.roc_curve/pr_curve need pandas; the same curves as line series do not
    records: dict[str, Any] = {f"{prefix}/plot/{name}": wandb.Image(str(path)) for name, path in paths.items()}
    if len(labels):
        records[f"{prefix}/confusion_matrix"] = wandb.plot.confusion_matrix(probs=probs, y_true=labels.tolist(),
                                                                            class_names=classes)
    for kind, title, xlabel in (("roc", "ROC", "false positive rate"), ("pr", "precision-recall", "recall")):
        curves = _curves(kind, probs, labels, shown)
        if curves:
            keys = [f"{classes[c]} ({'AUC' if kind == 'roc' else 'AP'} {v:.4f})" for c, _, _, v in curves]
            records[f"{prefix}/{kind}"] = wandb.plot.line_series(
                [x.tolist() for _, x, _, _ in curves], [y.tolist() for _, _, y, _ in curves], keys, title, xlabel
            )
    for lg in loggers:
        lg.experiment.log(records)
