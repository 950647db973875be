"""Checking checkpoint files before a run uses them: safe loading, corruption, compatibility.

Every checkpoint trainkit reads is loaded with ``weights_only=True``: tensors, numbers,
strings and containers only, so a file with a planted pickle payload is refused instead of
running someone else's code. Problems are :class:`ConfigError` (exit code 2) naming the file,
found before the run dir is touched.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import torch

from trainkit.errors import ConfigError

log = logging.getLogger(__name__)


def safe_load(path: str | Path, key: str) -> Any:
    """Whatever ``path`` holds, loaded safely (``weights_only=True``, on the CPU).

    Raises:
        ConfigError: missing, unreadable, truncated/corrupt, not a torch file (a plain pickle),
            or holding objects other than plain data; the message names the file and the key.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"file {str(path)!r} does not exist", key)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001  (torch raises several types for bad files)
        text = str(e).strip()
        reason = text.splitlines()[0] if text else type(e).__name__
        if "weights_only" in text or "Unsupported global" in text:
            reason = "it holds objects other than tensors and plain data (refused: loading would run its code)"
        elif "mmap can only be used" in text:  # no zip archive at all: a plain pickle, text, ...
            reason = "it is not a file written by torch.save (a plain pickle or another format)"
        raise ConfigError(f"checkpoint {str(path)!r} cannot be loaded: {reason}", key) from None


def load_checkpoint(path: str | Path, key: str) -> dict[str, Any]:
    """Load the Lightning checkpoint at ``path`` safely (see :func:`safe_load`).

    Raises:
        ConfigError: missing, truncated/corrupt, holding objects other than plain data, or not
            a Lightning checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist", key)
    ckpt = safe_load(path, key)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ConfigError(f"{str(path)!r} is not a Lightning checkpoint (no state_dict)", key)
    return ckpt


def first_loadable(candidates: Sequence[Path], key: str) -> tuple[Path, dict[str, Any]] | None:
    """The first of ``candidates`` that exists and loads; unreadable ones are reported and skipped.

    Raises:
        ConfigError: candidates exist but none loads.
    """
    present = [p for p in candidates if p.is_file()]
    problems = []
    for i, path in enumerate(present):
        try:
            return path, load_checkpoint(path, key)
        except ConfigError as e:
            problems.append(str(e))
            if i + 1 < len(present):  # the last one's problem is the error below
                log.warning("%s; trying the previous checkpoint", e)
    if problems:
        raise ConfigError("no usable checkpoint to resume from: " + "; ".join(problems), key)
    return None


def check_compatible(ckpt: dict[str, Any], model: torch.nn.Module, path: str | Path, key: str) -> None:
    """Refuse a checkpoint whose weights do not fit ``model`` (another architecture or size).

    Raises:
        ConfigError: naming the missing, unexpected and mis-shaped parameters.
    """
    theirs = ckpt["state_dict"]
    ours = model.state_dict()
    missing = [k for k in ours if k not in theirs]
    unexpected = [k for k in theirs if k not in ours]
    shapes = [f"{k} {tuple(theirs[k].shape)} vs {tuple(v.shape)}" for k, v in ours.items()
              if k in theirs and hasattr(theirs[k], "shape") and tuple(theirs[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        parts = [f"{name}: {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}"
                 for name, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)) if items]
        raise ConfigError(
            f"checkpoint {str(path)!r} was trained with another model than this recipe builds ({'; '.join(parts)})", key
        )


def resume_point(ckpt: dict[str, Any]) -> str:
    """Where training continues from ``ckpt``, in words (epochs counted from 0, as Lightning does).

    >>> loops = {"fit_loop": {"epoch_loop.batch_progress": {"current": {"processed": 7}, "is_last_batch": False}}}
    >>> resume_point({"epoch": 2, "global_step": 47, "loops": loops})
    'epoch 2 after 7 of its batches (global step 47)'
    """
    progress = ckpt.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress", {})
    epoch, step = int(ckpt.get("epoch", 0)), int(ckpt.get("global_step", 0))
    if progress.get("is_last_batch", True):
        return f"the start of epoch {epoch + 1} (global step {step}; epoch {epoch} is done)"
    return f"epoch {epoch} after {int(progress.get('current', {}).get('processed', 0))} of its batches (global step {step})"
