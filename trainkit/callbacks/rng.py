"""Random number generator states in checkpoints, so a resumed run continues the same streams.

Lightning does not store them (Lightning issue 17543): with dropout, a resumed run diverges
from an uninterrupted one. Every rank's Python, NumPy, torch (and CUDA) state is gathered to
the checkpoint and each rank gets its own back on resume. States are stored as tensors and
ints, never as NumPy objects, so the checkpoint loads with ``weights_only=True``.

Together with data loaders that draw from their own seeded generators (``trainkit.data``),
this makes a resumed CPU run bitwise identical to an uninterrupted one in deterministic mode.
"""

from __future__ import annotations

import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override


def capture() -> dict[str, Any]:
    """This process's generator states, as tensors and ints."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict[str, Any]) -> None:
    """Set this process's generators to a :func:`capture` result."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["mt"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RNGState(Callback):
    """Save every rank's generator states in checkpoints and restore them on resume."""

    @override
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        mine = capture()
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            # every rank is in dump_checkpoint here; rank zero writes the file
            states: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(states, mine)
        else:
            states = [mine]
        checkpoint["trainkit_rng"] = states

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        states = checkpoint.get("trainkit_rng")
        if not states:
            return
        if len(states) != trainer.world_size:
            rank_zero_warn(
                f"the checkpoint holds random states of {len(states)} processes, this run has {trainer.world_size}: "
                "ranks keep their fresh seeds (the run continues, but not bitwise as uninterrupted)"
            )
            return
        restore(states[trainer.global_rank])
