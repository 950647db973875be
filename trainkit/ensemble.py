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


def ensemble_metrics(model: torch.nn.Module, checkpoints: list[Path], loader: Iterable[Any], stage: str,
                     num_classes: int, device: torch.device | str = "cpu",
                     auroc_thresholds: int | None = None) -> dict[str, float]:
    """Metrics of the mean-softmax ensemble of ``checkpoints`` and of each member.

    ``auroc_thresholds`` is the model's: exact AUROC (``None``) or binned, as in training.

    Raises:
        ConfigError: no checkpoints (the run was not trained with cosine_restarts).
    """
    if not checkpoints:
        raise ConfigError("the run has no snapshot-*.ckpt: train with model.schedule: {name: cosine_restarts, ...}",
                          "--ensemble")
    out: dict[str, float] = {}
    total = None
    for path in checkpoints:
        probs, y = member_probs(model, path, loader, torch.device(device))
        out.update(_metrics(probs, y, num_classes, f"{stage}/{path.stem}", auroc_thresholds))
        total = probs if total is None else total + probs
    assert total is not None
    out.update(_metrics(total / len(checkpoints), y, num_classes, stage, auroc_thresholds))
    return out


def run_ensemble(cli: Any, stage: str) -> tuple[dict[str, float], dict[str, Any]]:
    """The ``--ensemble`` metrics of a TrainkitCLI's run on ``stage``'s split, and what it used."""
    from trainkit.callbacks.snapshots import snapshot_paths

    paths = snapshot_paths(cli.run_dir.checkpoints)
    dm = cli.datamodule
    loader = dm.test_dataloader() if stage == "test" else dm.val_dataloader()
    hp = cli.model.hparams
    metrics = ensemble_metrics(cli.model, paths, loader, stage, hp.num_classes, cli.trainer.strategy.root_device,
                               hp.auroc_thresholds)
    return metrics, {f"{stage}/ensemble": ", ".join(p.name for p in paths)}
