"""The console side of a run: a progress bar without Lightning's version number, one line of
key metrics per epoch, and the model summary in one line (its table in the run's log file).

The bar shows the step loss read at logging steps only. Lightning's bar shows values logged
with ``prog_bar=True`` and reads them on the host at every refresh (every step), a device sync
each on a GPU. The module logs its step values itself on the logging steps (one transfer,
:meth:`trainkit.module.Classifier.on_train_batch_end`) and keeps them as Python floats in
``step_values``; the bar shows those.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ModelSummary, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.utilities.model_summary import get_human_readable_count
from typing_extensions import override

log = logging.getLogger(__name__)


class ProgressBar(TQDMProgressBar):
    """Lightning's bar without ``v_num`` (the logger's version: a W&B id fragment here, noise),
    and no bar for the sanity check nor, with ``validation_bar=False`` (``trainkit fit``), for
    validation: in a log file each leaves a trail of lines, and the epoch line and the result
    table report the validation. Beside Lightning's values it shows the module's
    ``step_values`` (host floats of the last log step).
    """

    def __init__(self, validation_bar: bool = True):
        super().__init__()
        self.validation_bar = validation_bar

    @override
    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)  # as Lightning's own docstring of get_metrics shows
        if trainer.training:
            items.update(getattr(pl_module, "step_values", {}))
        return items

    @override
    def init_sanity_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)

    @override
    def init_validation_tqdm(self) -> Tqdm:
        return super().init_validation_tqdm() if self.validation_bar else Tqdm(disable=True)


class EpochLine(Callback):
    """One console line per finished epoch: the train and val loss and the monitored metric,
    marked when it is the best so far.

    The epoch's train metrics are logged in ``LightningModule.on_train_epoch_end``, which runs
    after this callback's hook of the same name, so the line of epoch N is written when epoch
    N + 1 starts, or when training ends.
    """

    def __init__(self, monitor: str, best: ModelCheckpoint | None = None):
        self.monitor = monitor
        self.best = best
        self._written = -1
        self._start = 0.0

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, trainer.current_epoch - 1)
        self._start = time.perf_counter()

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # current_epoch counts finished epochs; one stopped mid-way (preemption, max_steps) is not
        self._write(trainer, trainer.current_epoch - 1)

    def _write(self, trainer: pl.Trainer, epoch: int) -> None:
        if epoch < 0 or epoch <= self._written or not trainer.is_global_zero:
            return
        self._written = epoch
        metrics = trainer.callback_metrics
        keys = [k for k in ("train/loss", "val/loss", self.monitor) if k in metrics]
        keys = list(dict.fromkeys(keys))
        if not keys:
            return
        parts = [f"{k} {float(metrics[k]):.4f}" for k in keys]
        best = self.best.best_model_score if self.best is not None else None
        if self.monitor in metrics and best is not None and math.isclose(float(metrics[self.monitor]), float(best)):
            parts[-1] += " (best)"
        took = f"  {time.perf_counter() - self._start:.1f} s" if self._start else ""
        total = trainer.max_epochs if trainer.max_epochs not in (None, -1) else "?"
        log.info("epoch %d/%s  %s%s", epoch + 1, total, "  ".join(parts), took)


class OneLineSummary(ModelSummary):
    """The model's size in one console line; Lightning's table goes to the run's log file,
    without its FLOPs column when nothing was measured (FLOPs need an example input, which
    trainkit's modules do not set, so Lightning shows a column of zeros)."""

    @staticmethod
    @override
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int = 0,
        **summarize_kwargs: Any,
    ) -> None:
        columns = [c for c in summary_data if c[0] != "FLOPs"] if not total_flops else summary_data
        # Lightning logs the table itself: a library record, so the run's log file alone has it
        ModelSummary.summarize(columns, total_parameters, trainable_parameters, model_size, total_training_modes,
                               total_flops=total_flops, **summarize_kwargs)
        frozen = total_parameters - trainable_parameters
        log.info(
            "model: %s parameters%s, %.1f MB",
            get_human_readable_count(total_parameters),
            f" ({get_human_readable_count(frozen)} frozen)" if frozen else "",
            model_size,
        )
