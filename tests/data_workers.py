"""Worker for the 2-process gloo test of the data module's training loader (importable for spawn)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist


def shard_worker(rank: int, world_size: int, port: int, out_file: str) -> None:
    """Each rank walks 2 epochs of the data module's real training loader in a gloo group."""
    from trainkit.data.datamodule import DataModule

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        dm = DataModule(dataset="synthetic", dataset_args={"shape": [5], "size": 200}, batch_size=8, num_workers=0)
        dm.setup("fit")
        loader = dm.train_dataloader()  # its sampler shards by the process group's rank
        sampler = loader.sampler
        rows = dm.splits["train"].tensors[0]
        seen = []
        for epoch in range(2):
            sampler.set_epoch(epoch)  # Lightning's fit loop calls this at every epoch start
            ids = []
            for x, _ in loader:
                # every synthetic row is unique: find which training sample each one is
                ids += torch.cdist(x, rows).argmin(1).tolist()
            seen.append(ids)
        everyone = [None] * world_size
        dist.all_gather_object(everyone, seen)
        if rank == 0:
            Path(out_file).write_text(json.dumps({"seen": everyone, "n_train": len(rows)}))
    finally:
        dist.destroy_process_group()
