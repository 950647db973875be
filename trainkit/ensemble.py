"""Ensembles of a run's checkpoints: ``trainkit test --ensemble snapshots``.

Each member (a snapshot saved at the end of a cosine_restarts cycle, see
:mod:`trainkit.callbacks.snapshots`) predicts class probabilities on the split; the ensemble
predicts their mean. The ensemble's metrics are reported as ``<stage>/<metric>`` and each
member's as ``<stage>/snapshot-<k>/<metric>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from trainkit.errors import ConfigError
from trainkit.metrics import make_metrics, scores
from trainkit.nn.prune import match_masks

ENSEMBLES = ("snapshots",)


def check_ensemble(value: str | None, stage: str) -> str | None:
    """Validate ``--ensemble`` for ``stage``.

    Raises:
        ConfigError: an unknown kind, or a stage other than test/validate.
    """
    if value is None:
        return None
    if value not in ENSEMBLES:
        raise ConfigError(f"unknown ensemble {value!r} (valid: {', '.join(ENSEMBLES)})", "--ensemble")
    if stage not in ("test", "validate"):
        raise ConfigError(f"--ensemble is for the test and validate stages, not {stage}", "--ensemble")
    return value


@torch.no_grad()
def member_probs(model: torch.nn.Module, checkpoint: Path, loader: Iterable[Any], device: torch.device) -> tuple[Tensor, Tensor]:
    """Softmax outputs and targets of ``model`` with the weights of ``checkpoint`` on ``loader``."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    match_masks(model.net, state, "net.")
    model.load_state_dict(state)
    model.to(device).eval()
    probs, targets = [], []
    for batch in loader:
        probs.append(model(batch[0].to(device)).float().softmax(-1).cpu())
        targets.append(batch[1])
    return torch.cat(probs), torch.cat(targets)


def _metrics(probs: Tensor, y: Tensor, num_classes: int, prefix: str, auroc_thresholds: int | None) -> dict[str, float]:
    metrics = make_metrics(num_classes, prefix, auroc_thresholds)
    # the logits' softmax is probs again, so log-probs feed the shared scores() and the loss
    logp = probs.clamp_min(1e-12).log()
    out = {k: float(v) for k, v in metrics(scores(logp), y).items()}
    out[f"{prefix}/loss"] = float(F.nll_loss(logp, y))
    return out


def ensemble_outputs(model: torch.nn.Module, checkpoints: list[Path], loader: Iterable[Any], stage: str,
                     num_classes: int, device: torch.device | str = "cpu",
                     auroc_thresholds: int | None = None) -> tuple[dict[str, float], dict[str, Tensor], Tensor]:
    """Metrics of the mean-softmax ensemble of ``checkpoints`` and of each member, the
    probabilities by name (``ensemble``, ``snapshot-<k>``) and the targets.

    ``auroc_thresholds`` is the model's: exact AUROC (``None``) or binned, as in training.

    Raises:
        ConfigError: no checkpoints (the run was not trained with cosine_restarts).
    """
    if not checkpoints:
        raise ConfigError("the run has no snapshot-*.ckpt: train with model.schedule: {name: cosine_restarts, ...}",
                          "--ensemble")
    out: dict[str, float] = {}
    probs: dict[str, Tensor] = {}
    for path in checkpoints:
        probs[path.stem], y = member_probs(model, path, loader, torch.device(device))
        out.update(_metrics(probs[path.stem], y, num_classes, f"{stage}/{path.stem}", auroc_thresholds))
    probs = {"ensemble": sum(probs.values()) / len(checkpoints), **probs}  # type: ignore[dict-item]
    out.update(_metrics(probs["ensemble"], y, num_classes, stage, auroc_thresholds))
    return out, probs, y


def ensemble_metrics(model: torch.nn.Module, checkpoints: list[Path], loader: Iterable[Any], stage: str,
                     num_classes: int, device: torch.device | str = "cpu",
                     auroc_thresholds: int | None = None) -> dict[str, float]:
    """The metrics of :func:`ensemble_outputs`."""
    return ensemble_outputs(model, checkpoints, loader, stage, num_classes, device, auroc_thresholds)[0]


class _Prepared:
    """Batches of ``loader`` with their inputs as the model takes them (file sources' uint8
    images standardized), iterable once per member."""

    def __init__(self, loader: Iterable[Any], prepare: Any):
        self.loader, self.prepare = loader, prepare

    def __iter__(self) -> Any:
        for x, y, *_ in self.loader:
            yield self.prepare(x), y


def run_ensemble(cli: Any, stage: str) -> tuple[dict[str, float], dict[str, Any]]:
    """The ``--ensemble`` metrics of a TrainkitCLI's run on ``stage``'s split, and what it used.

    Like a plain ``test``/``validate``: the metrics of the ensemble and of each member go to the
    run's loggers (W&B, CSV); ``test`` also draws the evaluation plots of the ensemble (in the
    run dir) and of each member (in ``<run dir>/ensemble/snapshot-<k>/``).
    """
    from trainkit.callbacks.snapshots import snapshot_paths
    from trainkit.evaluation import nonfinite_report, report_evaluation

    paths = snapshot_paths(cli.run_dir.checkpoints)
    dm = cli.datamodule
    loader = _Prepared(dm.test_dataloader() if stage == "test" else dm.val_dataloader(), dm.prepare_inputs)
    hp, trainer = cli.model.hparams, cli.trainer
    metrics, probs, y = ensemble_outputs(cli.model, paths, loader, stage, hp.num_classes, trainer.strategy.root_device,
                                         hp.auroc_thresholds)
    extra: dict[str, Any] = {f"{stage}/ensemble": ", ".join(p.name for p in paths)}
    if not trainer.is_global_zero:
        return metrics, extra
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
        logger.save()
    classes = [str(c) for c in dm.data.classes]
    for name, p in probs.items():
        prefix = stage if name == "ensemble" else f"{stage}/{name}"
        if stage != "test":
            found = nonfinite_report(p.numpy(), prefix)
        else:
            out = cli.run_dir.path if name == "ensemble" else cli.run_dir.path / "ensemble" / name
            title = f"ensemble of {len(paths)} snapshots" if name == "ensemble" else name
            found = report_evaluation(trainer, p.numpy(), y.numpy(), classes, out, prefix, title, cli.model.positive_class)
        if name != "ensemble":  # members: one line for their plots, their counts only when not 0
            found = {k: v for k, v in found.items() if k.endswith("/warning") or (k.endswith("/nonfinite_outputs") and v)}
        extra.update(found)
    if stage == "test":
        extra[f"{stage}/member_plots"] = str(cli.run_dir.path / "ensemble" / "snapshot-<k>")
    return metrics, extra
