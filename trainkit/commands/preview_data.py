"""``trainkit preview-data --config R.yaml [overrides]``: a PNG grid of augmented training
samples in a new run dir, also logged to W&B (:mod:`trainkit.data.preview`)."""

from __future__ import annotations

from typing import Sequence


def main(args: Sequence[str]) -> int:
    """Write and log the grid; print its path and the run dir."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from trainkit.data.preview import run_preview

    path = run_preview(list(args))
    if rank_zero_only.rank == 0:
        print(f"preview: {path}")
        print(f"run dir: {path.parent}")
    return 0
