"""The fit verdict: diverged, too short to judge, still improving, over-fitting, under-fitting
or converged, from the curves.

Both curves are plain cross-entropy in eval mode (see :mod:`trainkit.callbacks.curves`), so
their gap means generalization, not dropout or penalties. Every rule is scale-aware: losses are
compared with the loss of a uniform guess, ``chance = ln(num_classes)``, and a change counts only
when it is larger than all of an absolute floor (``ABS`` x chance), a relative one (a fraction of
the loss it changes) and ``NOISE`` times the val loss's epoch-to-epoch noise over the last
``WINDOW`` epochs (the spread of its successive differences), so a wiggle of a small loss is not a
trend. The rules, first match wins:

- diverged: a loss is not finite; or a loss rose above ``BLOWUP`` x chance (worse than a uniform
  guess) and the run ends no better than a guess; or train *and* val loss climb back from their
  minima (the optimization itself got worse: the lr is too high for the run);
- too short to judge: fewer than ``MIN_EPOCHS`` epochs, too few to tell a trend from noise;
- still improving: the epoch budget ended the run while the val loss, ending at (within noise of)
  its minimum, reached a new minimum in its last ``RECENT`` epochs (at most half the run), lower
  than every earlier epoch by more than ``IMPROVING`` of its level (and the floors);
- over-fitting: val loss rose by more than ``RISE`` of its minimum (and the floors) while the train
  loss kept falling, or the final gap val - train exceeds ``GAP`` x chance;
- under-fitting: the final train loss is above ``HIGH`` x chance and the gap below ``CLOSE`` x
  chance (the model cannot even fit its training data);
- converged: none of the above.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import numpy as np

log = logging.getLogger(__name__)

ABS = 0.02  # a change must exceed 0.02 x ln(num_classes) ...
NOISE = 2.0  # ... and twice the val loss's epoch-to-epoch noise
WINDOW = 5  # the last epochs the noise is read from
RECENT = 3  # still improving: a new minimum in the last 3 epochs
MIN_EPOCHS = 3
BLOWUP = 1.1  # a loss 10% above a uniform guess's
GUESS = 0.9  # ... and a final val loss above 0.9 x chance: no better than a guess
RISE = 0.2  # val loss above its minimum by 20% of it
GAP = 0.15  # val - train loss, as a fraction of ln(num_classes)
HIGH = 0.3  # train loss, as a fraction of ln(num_classes)
CLOSE = 0.1
IMPROVING = 0.02  # a new val-loss minimum lower by 2% of the loss


def noise_level(values: Sequence[float], window: int = WINDOW) -> float:
    """Epoch-to-epoch noise of the last ``window + 1`` values, robust to their trend: from the
    median absolute second difference (a linear trend has none, one jump moves a median little),
    scaled to a standard deviation (a second difference of independent noise of std ``s`` has std
    ``sqrt(6) s``, and a normal's median absolute value is 0.6745 of its std); 0 with fewer than
    3 second differences.

    >>> noise_level([2.0, 1.8, 1.6, 1.4, 1.2, 1.0]) < 1e-12  # a straight fall has no noise
    True
    >>> round(noise_level([1.0, 1.1, 1.0, 1.1, 1.0, 1.1]), 4)
    0.1211
    """
    d2 = np.diff(np.asarray(values[-(window + 1):], dtype=float), n=2)
    return float(np.median(np.abs(d2)) / (0.6745 * math.sqrt(6))) if len(d2) >= 3 else 0.0


def fit_verdict(val: Sequence[float], train: Sequence[float], num_classes: int, stopped_early: bool) -> dict[str, Any]:
    """The verdict and the numbers behind it.

    Args:
        val: val loss after each epoch.
        train: eval-mode train loss (training subset) after each epoch.
        num_classes: classes of the task (the chance loss is ``ln(num_classes)``).
        stopped_early: early stopping (not the epoch budget) ended the run.

    >>> fit_verdict([1.0, 0.5, 0.8], [0.9, 0.3, 0.1], 10, False)["verdict"]
    'over-fitting'
    >>> fit_verdict([2.3, 2.3, 2.3], [2.3, 2.3, 2.3], 10, False)["verdict"]
    'under-fitting'
    >>> fit_verdict([1.2, 0.29, 0.17], [1.1, 0.25, 0.08], 10, False)["verdict"]
    'still improving'
    >>> fit_verdict([1.0, 0.2, 0.2, 0.2, 0.2], [0.9, 0.2, 0.2, 0.2, 0.2], 10, False)["verdict"]
    'converged'
    >>> fit_verdict([2.8, 2.39, 2.32, 2.31], [2.77, 2.39, 2.32, 2.31], 10, False)["verdict"]
    'diverged'
    >>> fit_verdict([1.2, 0.3], [1.1, 0.2], 10, False)["verdict"]
    'too short to judge'
    >>> fit_verdict([2.3], [2.3], 10, False)["verdict"]
    'too short to judge'
    """
    assert val and len(val) == len(train), "one train and one val loss per epoch"
    chance = math.log(num_classes)
    n = len(val)
    numbers: dict[str, Any] = {"val_loss": val[-1], "train_loss": train[-1], "chance_loss": chance, "epochs": n}
    bad = next((i for i, (v, t) in enumerate(zip(val, train)) if not (math.isfinite(v) and math.isfinite(t))), None)
    if bad is not None:
        why = f"the {'val' if not math.isfinite(val[bad]) else 'train'} loss is not finite at epoch {bad + 1}"
        return {"verdict": "diverged", "reason": why + ": lower the lr, warm up, or clip gradients", **numbers}

    best = min(range(n), key=val.__getitem__)
    v_end, t_end, v_min, t_min = val[-1], train[-1], val[best], min(train)
    # the recent epochs are at most half the run: with 3 epochs, the last one
    window, recent = min(WINDOW, n - 1), min(RECENT, n // 2)
    noise = noise_level(val, window)
    floor = max(ABS * chance, NOISE * noise)  # no change smaller than this counts
    rise, t_rise, gap = v_end - v_min, t_end - t_min, v_end - t_end
    gain = min(val[:-recent]) - min(val[-recent:]) if recent else 0.0
    peak = max(range(n), key=lambda i: max(val[i], train[i]))
    numbers.update({
        "gap": gap, "best_val_loss": v_min, "best_epoch": best + 1, "val_rise": rise, "val_rise_rel": rise / max(v_min, 1e-12),
        "recent_gain": gain, "recent_epochs": recent, "noise": noise, "floor": floor,
    })

    if max(val[peak], train[peak]) > BLOWUP * chance and v_end > GUESS * chance:
        verdict = "diverged"
        why = (f"the loss rose to {max(val[peak], train[peak]):.3f} at epoch {peak + 1}, above a uniform guess's "
               f"{chance:.3f}, and val loss ends at {v_end:.3f}, no better than guessing: the lr is likely too high "
               "(lower it, warm up, or clip gradients)")
    elif rise > max(floor, RISE * v_min) and t_rise > max(floor, RISE * t_min):
        verdict = "diverged"
        why = (f"train and val loss climb back from their minima (train {t_min:.3f} -> {t_end:.3f}, val {v_min:.3f} -> "
               f"{v_end:.3f}): the optimization became unstable; lower the lr or clip gradients")
    elif n < MIN_EPOCHS:
        verdict = "too short to judge"
        why = (f"{n} epoch{'s' if n > 1 else ''} cannot tell a trend from noise (need >= {MIN_EPOCHS}); "
               f"val loss {' -> '.join(f'{v:.3f}' for v in val)}, train loss {t_end:.3f}")
    elif not stopped_early and rise <= floor and gain > max(floor, IMPROVING * v_end):
        verdict = "still improving"
        why = (f"val loss fell by {gain:.3f} to {min(val[-recent:]):.3f} in the last {_epochs(recent)} (more than "
               f"{max(floor, IMPROVING * v_end):.3f}: noise and scale); more epochs may help")
        if t_end > HIGH * chance:
            why += f" (train loss {t_end:.3f} is still high: a higher lr may too)"
    elif (rise > max(floor, RISE * v_min) and t_end < train[best]) or gap > GAP * chance:
        verdict = "over-fitting"
        why = (
            f"val loss {v_end:.3f} rose {rise:.3f} ({rise / max(v_min, 1e-12):.0%}) from its minimum {v_min:.3f} (epoch "
            f"{best + 1}) while train loss fell to {t_end:.3f}"
            if rise > max(floor, RISE * v_min) and t_end < train[best]
            else f"val loss {v_end:.3f} is {gap:.3f} above train loss {t_end:.3f} (> {GAP:g} x chance {chance:.3f})"
        )
    elif t_end > HIGH * chance and abs(gap) < CLOSE * chance:
        verdict = "under-fitting"
        why = f"train loss {t_end:.3f} and val loss {v_end:.3f} are both high (chance {chance:.3f}) and close"
    else:
        verdict = "converged"
        why = (f"val loss {v_end:.3f}, train loss {t_end:.3f}, gap {gap:.3f}; no change beyond {floor:.3f} "
               f"(noise and scale) in the last {_epochs(recent)}")
    return {"verdict": verdict, "reason": why, **numbers}


def _epochs(n: int) -> str:
    return f"{n} epoch{'s' if n != 1 else ''}"


def fit_report(trainer: Any, best_checkpoint: str, num_classes: int) -> dict[str, Any]:
    """``fit/*`` entries and the ``verdict`` of a finished ``fit``: why and when it stopped,
    the best checkpoint's epoch, :func:`fit_verdict` of the recorded curves, and
    ``fit/validation`` when nothing was validated (:func:`no_validation`). Also logged."""
    import torch

    from trainkit.callbacks.curves import FitCurves
    from trainkit.callbacks.early_stopping import SmoothedEarlyStopping
    from trainkit.callbacks.group import find

    es = next((c for c in trainer.callbacks if isinstance(c, SmoothedEarlyStopping)), None)
    # any other callback that stopped the run names why (a sweep's pruner: trainkit.sweep.trials)
    stopper = next((c for c in trainer.callbacks if isinstance(getattr(c, "stop_reason", None), str)), None)
    if stopper is not None:
        out = {"fit/stop_reason": stopper.stop_reason, "fit/early_stopped": True, "fit/stopped_epoch": trainer.current_epoch}
        if es is not None:
            out["fit/es_best_epoch"] = es.best_epoch
    elif es is not None:
        out = es.summary()
    else:
        budget = "step budget" if trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps else "epoch budget"
        out = {"fit/stop_reason": budget, "fit/early_stopped": False}
    if best_checkpoint:
        # the epoch field of a checkpoint is the 0-based epoch it was saved in
        out["fit/best_epoch"] = int(torch.load(best_checkpoint, map_location="cpu", weights_only=True, mmap=True)["epoch"]) + 1
    unvalidated = no_validation(trainer)
    if unvalidated:
        out["fit/validation"] = unvalidated
    curves = find(trainer, FitCurves)  # inside trainkit's CallbackGroup
    if curves is not None and curves.val_loss:
        v = fit_verdict(curves.val_loss, curves.train_loss, num_classes, bool(out["fit/early_stopped"]))
        n = min(curves.subset_size, len(trainer.datamodule.indices["train"]))
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


def no_validation(trainer: Any) -> str | None:
    """Why a finished fit never validated (``data.val_fraction: 0``, ``limit_val_batches: 0``),
    as the line ``fit`` reports as ``fit/validation``; ``None`` when it validated."""
    if any(k.startswith("val/") for k in trainer.callback_metrics):
        return None
    splits = getattr(trainer.datamodule, "splits", {})
    cause = ("data.val_fraction: 0" if "val" in splits and not len(splits["val"]) else
             "trainer.limit_val_batches: 0" if trainer.limit_val_batches == 0 else "no validation epoch ran")
    return (f"none ({cause}): no best.ckpt and no verdict; the metrics are the last training epoch's "
            "(train mode, running means); last.ckpt is the trained model (trainkit test --ckpt_path last)")
