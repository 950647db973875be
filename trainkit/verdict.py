"""The fit verdict: over-fitting, under-fitting, still improving or converged, from the curves.

Both curves are plain cross-entropy in eval mode (see :mod:`trainkit.callbacks.curves`), so
their gap means generalization, not dropout or penalties. Losses are compared with the loss of
a uniform guess, ``ln(num_classes)``, so the thresholds mean the same for 2 or 100 classes.
The rules, first match wins:

- over-fitting: val loss rose by more than ``RISE`` (relative) from its minimum while the
  train loss kept falling, or the final gap val - train exceeds ``GAP`` x chance;
- under-fitting: the final train loss is above ``HIGH`` x chance and the gap below ``CLOSE`` x
  chance (the model cannot even fit its training data);
- still improving: the epoch budget ended the run while the val loss reached a new minimum
  (lower by more than ``IMPROVING`` x chance) in its last ``WINDOW`` epochs;
- converged: none of the above.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

log = logging.getLogger(__name__)

RISE = 0.2  # val loss above its minimum by 20%
GAP = 0.15  # val - train loss, as a fraction of ln(num_classes)
HIGH = 0.3  # train loss, as a fraction of ln(num_classes)
CLOSE = 0.1
IMPROVING = 0.01  # new val-loss minimum, lower by this fraction of ln(num_classes)
WINDOW = 3


def fit_verdict(val: Sequence[float], train: Sequence[float], num_classes: int, stopped_early: bool) -> dict[str, Any]:
    """The verdict and the numbers behind it.

    Args:
        val: val loss after each epoch.
        train: eval-mode train loss (training subset) after each epoch.
        num_classes: classes of the task (the chance loss is ``ln(num_classes)``).
        stopped_early: early stopping (not the epoch budget) ended the run.

    >>> fit_verdict([1.0, 0.5, 0.8], [0.9, 0.3, 0.1], 10, False)["verdict"]
    'over-fitting'
    >>> fit_verdict([2.2, 2.1], [2.2, 2.1], 10, False)["verdict"]
    'under-fitting'
    >>> fit_verdict([1.0, 0.5, 0.3, 0.2], [0.9, 0.5, 0.3, 0.2], 10, False)["verdict"]
    'still improving'
    >>> fit_verdict([1.0, 0.2, 0.2, 0.2, 0.2], [0.9, 0.2, 0.2, 0.2, 0.2], 10, False)["verdict"]
    'converged'
    """
    assert val and len(val) == len(train), "one train and one val loss per epoch"
    chance = math.log(num_classes)
    best = min(range(len(val)), key=val.__getitem__)
    v_end, t_end = val[-1], train[-1]
    rise = (v_end - val[best]) / max(val[best], 1e-12)
    gap = v_end - t_end
    before = min(val[:-WINDOW]) if len(val) > WINDOW else math.inf
    recent_gain = before - min(val[-WINDOW:]) if math.isfinite(before) else 0.0
    numbers = {
        "val_loss": v_end,
        "train_loss": t_end,
        "gap": gap,
        "best_val_loss": val[best],
        "best_epoch": best + 1,
        "val_rise": rise,
        "chance_loss": chance,
        "epochs": len(val),
        "recent_gain": recent_gain,
    }
    if (rise > RISE and t_end < train[best]) or gap > GAP * chance:
        why = (
            f"val loss {v_end:.3f} rose {rise:.0%} from its minimum {val[best]:.3f} (epoch {best + 1}) while train loss fell to {t_end:.3f}"
            if rise > RISE and t_end < train[best]
            else f"val loss {v_end:.3f} is {gap:.3f} above train loss {t_end:.3f} (> {GAP:g} x chance {chance:.3f})"
        )
        verdict = "over-fitting"
    elif t_end > HIGH * chance and abs(gap) < CLOSE * chance:
        verdict = "under-fitting"
        why = f"train loss {t_end:.3f} and val loss {v_end:.3f} are both high (chance {chance:.3f}) and close"
    elif not stopped_early and recent_gain > IMPROVING * chance:
        verdict = "still improving"
        why = f"val loss fell by {recent_gain:.3f} in the last {WINDOW} epochs to {min(val[-WINDOW:]):.3f}; more epochs may help"
    else:
        verdict = "converged"
        why = f"val loss {v_end:.3f}, train loss {t_end:.3f}, gap {gap:.3f}; no gain in the last {WINDOW} epochs"
    return {"verdict": verdict, "reason": why, **numbers}


def fit_report(trainer: Any, best_checkpoint: str, num_classes: int) -> dict[str, Any]:
    """``fit/*`` entries and the ``verdict`` of a finished ``fit``: why and when it stopped,
    the best checkpoint's epoch, and :func:`fit_verdict` of the recorded curves. Also logged."""
    import torch

    from trainkit.callbacks.curves import FitCurves
    from trainkit.callbacks.early_stopping import SmoothedEarlyStopping
    from trainkit.callbacks.group import find

    es = next((c for c in trainer.callbacks if isinstance(c, SmoothedEarlyStopping)), None)
    if es is not None:
        out = es.summary()
    else:
        budget = "step budget" if trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps else "epoch budget"
        out = {"fit/stop_reason": budget, "fit/early_stopped": False}
    if best_checkpoint:
        # the epoch field of a checkpoint is the 0-based epoch it was saved in
        out["fit/best_epoch"] = int(torch.load(best_checkpoint, map_location="cpu", weights_only=True, mmap=True)["epoch"]) + 1
    curves = find(trainer, FitCurves)  # inside trainkit's CallbackGroup
    if curves is not None and curves.val_loss:
        v = fit_verdict(curves.val_loss, curves.train_loss, num_classes, bool(out["fit/early_stopped"]))
        n = min(curves.subset_size, len(trainer.datamodule.arrays["train"][1]))
        v["line"] = (
            f"{v['verdict']}: {v['reason']} (train loss measured as val loss is: eval mode, no "
            f"regularization terms, on {n} training samples)"
        )
        out["verdict"] = v
    if trainer.is_global_zero:
        numbers = {k: float(out[k]) for k in ("fit/stopped_epoch", "fit/best_epoch") if k in out}
        for logger in trainer.loggers:
            logger.log_metrics(numbers, step=trainer.global_step)
        log.info("fit stopped: %s", out["fit/stop_reason"])
    return out
