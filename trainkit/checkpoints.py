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


def load_checkpoint(path: str | Path, key: str) -> dict[str, Any]:
    """Load ``path`` safely (``weights_only=True``, memory-mapped, on the CPU).

    Raises:
        ConfigError: missing, truncated/corrupt, or holding objects other than plain data.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist", key)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001  (torch raises several types for bad files)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            reason = "it holds objects other than tensors and plain data (refused: loading would run its code)"
        raise ConfigError(f"checkpoint {str(path)!r} cannot be loaded: {reason}", key) from None
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
