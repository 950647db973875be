"""Helpers of the streaming tests: fingerprinted image folders, a recording Lightning module,
and the worker of the 2-process gloo test (importable for ``torch.multiprocessing.spawn``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import cv2
import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist

SIZE = 12


def make_images(root: Path, per_class: int = 40, classes: int = 3, seed: int = 0) -> Path:
    """A folder of distinct PNGs: image k's pixels (0, 0) and (0, W-1) hold (k % 256, k // 256, 7)
    and pixel (1, 0) is 255, (1, W-1) 0, so a sample is known by :func:`fingerprints` and a
    horizontal flip by :func:`flipped`."""
    rng = np.random.default_rng(seed)
    k = 0
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)  # RGB
            img[0, 0] = img[0, -1] = (k % 256, k // 256, 7)
            img[1, 0], img[1, -1] = 255, 0
            assert cv2.imwrite(str(root / f"c{c}" / f"{i:03d}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            k += 1
    return root


def fingerprints(x: torch.Tensor) -> list[int]:
    """The image numbers of a uint8 ``N,3,H,W`` batch of :func:`make_images` images."""
    return [int(a) + 256 * int(b) for a, b in zip(x[:, 0, 0, 0], x[:, 1, 0, 0])]


def flipped(x: torch.Tensor) -> list[bool]:
    """Which images of the batch are horizontally flipped."""
    return [bool(v == 0) for v in x[:, 0, 1, 0]]


class Stop(Exception):
    """Ends a fit at a chosen step (after a checkpoint), as a kill would."""


class Recorder(pl.LightningModule):
    """A linear model on the mean pixel that records each training batch's fingerprints."""

    def __init__(self, seen: list, stop_at: int | None = None, ckpt: str | None = None,
                 identify: Callable[[Any], list[int]] = lambda b: fingerprints(b[0])):
        super().__init__()
        self.lin = torch.nn.Linear(3, 3)
        self.seen, self.stop_at, self.ckpt, self.identify = seen, stop_at, ckpt, identify

    def training_step(self, batch: Any, i: int) -> torch.Tensor:
        self.seen.append((self.current_epoch, self.identify(batch)))
        if isinstance(batch, dict):  # LitData's own samples: encoded bytes, not decoded here
            x, y = torch.zeros(len(batch["label"]), 3), batch["label"]
        else:
            x, y = batch[0].float().mean((2, 3)), batch[1]
        return torch.nn.functional.cross_entropy(self.lin(x), y)

    def on_train_batch_end(self, *args: Any) -> None:
        if self.stop_at is not None and self.global_step == self.stop_at:
            self.trainer.save_checkpoint(self.ckpt)
            raise Stop()

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def epochs_seen(seen: list) -> dict[int, list[int]]:
    """Recorded fingerprints per epoch, in the order trained on."""
    out: dict[int, list[int]] = {}
    for epoch, ids in seen:
        out.setdefault(epoch, []).extend(ids)
    return out


def ddp_worker(rank: int, world_size: int, port: int, root: str, out_file: str) -> None:
    """Each rank streams 2 epochs of the training split with 2 workers in a gloo group."""
    import multiprocessing

    from trainkit.data.streaming import StreamingSource

    # a process torch's spawn starts has spawn as its default start method, so its DataLoader
    # workers would re-import torch (~15 s each here); torchrun's and srun's processes fork them
    multiprocessing.set_start_method("fork", force=True)

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        loader = StreamingSource(root).loader("train", batch_size=8, shuffle=True, seed=5, rank=rank,
                                              world_size=world_size, num_workers=2, pin_memory=False)
        seen = []
        for epoch in range(2):
            loader.set_epoch(epoch)
            seen.append([k for x, _ in loader for k in fingerprints(x)])
        everyone: list = [None] * world_size
        dist.all_gather_object(everyone, {"seen": seen, "batches": len(loader)})
        if rank == 0:
            Path(out_file).write_text(json.dumps(everyone))
    finally:
        dist.destroy_process_group()
