"""Worker functions for tests that start real torch.distributed process groups (gloo, CPU).

They live in an importable module so that ``torch.multiprocessing.spawn`` can pickle them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist


def metrics_worker(rank: int, world_size: int, port: int, data_file: str, out_file: str) -> None:
    """Each rank updates trainkit's metrics with its uneven shard; rank 0 writes the synced result."""
    from torchmetrics import MeanMetric

    from trainkit.metrics import make_metrics, scores

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        data = torch.load(data_file, weights_only=True)
        logits, target, losses = data["logits"], data["target"], data["losses"]
        cut = int(len(target) * 0.37)  # deliberately uneven shards
        shard = slice(0, cut) if rank == 0 else slice(cut, None)
        metrics = make_metrics(logits.shape[1], "val")
        loss = MeanMetric()
        # several updates per rank, as over the batches of an epoch
        for chunk in torch.arange(len(target))[shard].split(16):
            metrics.update(scores(logits[chunk]), target[chunk])
            loss.update(losses[chunk].mean(), weight=len(chunk))
        result = {k: float(v) for k, v in metrics.compute().items()}
        result["val/loss"] = float(loss.compute())
        if rank == 0:
            Path(out_file).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()
