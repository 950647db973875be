"""The progress bar of ``fit``: Lightning's, with the step loss read at logging steps only.

Lightning's bar shows values logged with ``prog_bar=True`` and reads them on the host at every
refresh (every step), a device sync each on a GPU. The module logs its step values itself on
the logging steps (one transfer, :meth:`trainkit.module.Classifier.on_train_batch_end`) and
keeps them as Python floats in ``step_values``; this bar shows those.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar
from typing_extensions import override


class StepValuesBar(TQDMProgressBar):
    """``TQDMProgressBar`` plus the module's ``step_values`` (host floats of the last log step)."""

    @override
    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        if trainer.training:
            items.update(getattr(pl_module, "step_values", {}))
        return items
