"""Early stopping on a smoothed monitored metric (the recipe's ``early_stopping:`` keys).

``early_stopping: {monitor: val/loss, mode: min, patience: 5, min_delta: 0.0, smoothing: 0.0}``:
stop when the exponential moving average of ``monitor`` has not improved by more than
``min_delta`` for ``patience`` validation epochs. ``smoothing`` is the EMA's weight of the past
(``ema = s * ema + (1 - s) * value``; 0 judges the raw metric), so one noisy epoch neither resets
nor exhausts the patience on its own. When early stopping is on, ``best.ckpt`` is ranked by the
same metric and mode (``checkpoint.monitor``/``mode`` follow ``early_stopping``), so the run
stops and reports on one criterion.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping
from typing_extensions import override

from trainkit.errors import ConfigError

log = logging.getLogger(__name__)
KEY = "early_stopping"


@dataclass
class EarlyStoppingConfig:
    """The recipe's ``early_stopping:`` keys (``early_stopping: null``, the default, is off).

    Args:
        monitor: ``<train|val>/<loss|acc|precision|recall|f1|auroc>``.
        mode: ``min`` or ``max``; ``null``: ``min`` for losses, ``max`` otherwise.
        patience: validation epochs without improvement of the smoothed metric before stopping.
        min_delta: smallest change of the smoothed metric that counts as an improvement.
        smoothing: weight of the past in the exponential moving average, in ``[0, 1)``.
    """

    monitor: str = "val/loss"
    mode: str | None = None
    patience: int = 5
    min_delta: float = 0.0
    smoothing: float = 0.0

    def __post_init__(self) -> None:
        from trainkit.metrics import METRIC_NAMES

        valid = [f"{s}/{m}" for s in ("val", "train") for m in METRIC_NAMES]
        if self.monitor not in valid:
            raise ConfigError(f"unknown metric {self.monitor!r} (valid: {', '.join(valid)})", f"{KEY}.monitor")
        if self.mode is None:
            self.mode = "min" if self.monitor.endswith("loss") else "max"
        if self.mode not in ("min", "max"):
            raise ConfigError(f"must be min or max, got {self.mode!r}", f"{KEY}.mode")
        if isinstance(self.patience, bool) or self.patience < 1:
            raise ConfigError(f"must be an integer >= 1, got {self.patience!r}", f"{KEY}.patience")
        if not self.min_delta >= 0:
            raise ConfigError(f"must be >= 0, got {self.min_delta!r}", f"{KEY}.min_delta")
        if not 0 <= self.smoothing < 1:
            raise ConfigError(f"must be in [0, 1) (0: no smoothing), got {self.smoothing!r}", f"{KEY}.smoothing")


class SmoothedEarlyStopping(EarlyStopping):
    """Lightning's EarlyStopping judging an EMA of the monitored metric.

    Epochs in ``best_epoch`` and ``stopped_epoch_number`` count from 1, as ``fit/epochs`` does.
    """

    def __init__(self, cfg: EarlyStoppingConfig):
        super().__init__(monitor=cfg.monitor, mode=cfg.mode, patience=cfg.patience, min_delta=cfg.min_delta)
        self.cfg = cfg
        self.smoothing = cfg.smoothing
        self.smoothed: float | None = None
        self.best_epoch = 0
        self._epoch = 0  # the epoch being judged (0-based), set by the hooks below

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch = trainer.current_epoch
        super().on_train_epoch_end(trainer, pl_module)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch = trainer.current_epoch
        super().on_validation_end(trainer, pl_module)

    def _evaluate_stopping_criteria(self, current: torch.Tensor) -> tuple[bool, str | None]:
        # The one place Lightning judges a value: smoothing it here keeps Lightning's patience,
        # min_delta, non-finite check, DDP agreement and checkpointed state as they are.
        value = float(current)
        if self.smoothed is None or not torch.isfinite(current):
            self.smoothed = value
        else:
            self.smoothed = self.smoothing * self.smoothed + (1 - self.smoothing) * value
        should_stop, reason = super()._evaluate_stopping_criteria(torch.tensor(self.smoothed, dtype=current.dtype))
        if self.wait_count == 0 and not should_stop:
            self.best_epoch = self._epoch + 1
        return should_stop, reason

    def restart(self) -> None:
        """Judge from scratch from the next validation on (the model changed: pruning)."""
        self.wait_count = 0
        self.best_score = torch.tensor(torch.inf if self.mode == "min" else -torch.inf)
        self.smoothed = None

    def summary(self) -> dict[str, Any]:
        """``fit/*`` entries for metrics.json: why and when the run stopped, and the best epoch."""
        stopped = bool(self.stopped_epoch) or self.stopping_reason_message is not None
        what = f"{self.monitor}" + (f" (EMA, smoothing {self.smoothing:g})" if self.smoothing else "")
        if stopped and not torch.isfinite(torch.tensor(self.smoothed or 0.0)):
            reason = f"early stopping: {self.monitor} is not finite at epoch {self.stopped_epoch + 1}"
        elif stopped:
            reason = (
                f"early stopping: {what} did not improve by more than {self.cfg.min_delta:g} for "
                f"{self.wait_count} epochs after epoch {self.best_epoch} ({self.best_score:.4f})"
            )
        else:
            reason = "epoch budget"
        out: dict[str, Any] = {"fit/stop_reason": reason, "fit/early_stopped": stopped}
        if stopped:
            out["fit/stopped_epoch"] = self.stopped_epoch + 1
        out["fit/es_best_epoch"] = self.best_epoch
        return out

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "smoothed": self.smoothed, "best_epoch": self.best_epoch}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.smoothed = state_dict.get("smoothed")
        self.best_epoch = state_dict.get("best_epoch", 0)
