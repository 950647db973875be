"""Worker functions and callbacks for tests that start real torch.distributed process groups (gloo, CPU).

They live in an importable module so that ``torch.multiprocessing.spawn`` can pickle them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
from lightning.pytorch import Callback
from torch.nn.modules.batchnorm import _BatchNorm


def metrics_worker(rank: int, world_size: int, port: int, data_file: str, out_file: str,
                   auroc_thresholds: int | None = None) -> None:
    """Each rank updates trainkit's metrics with its uneven shard; rank 0 writes the synced result."""
    from trainkit.metrics import StageMetrics

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        data = torch.load(data_file, weights_only=True)
        logits, target, losses = data["logits"], data["target"], data["losses"]
        cut = int(len(target) * 0.37)  # deliberately uneven shards
        shard = slice(0, cut) if rank == 0 else slice(cut, None)
        metrics = StageMetrics(logits.shape[1], "val", chunk=40, auroc_thresholds=auroc_thresholds)
        # several steps per rank, as over the batches of an epoch
        for step in torch.arange(len(target))[shard].split(16):
            metrics.update(logits[step], target[step], losses[step].mean())
        result = {k: float(v) for k, v in metrics.compute().items()}
        if rank == 0:
            Path(out_file).write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()



class RecordNormLayers(Callback):
    """Writes, per rank, the class names of the model's batch norm layers once training starts."""

    def __init__(self, path: str):
        self.path = path

    def on_train_start(self, trainer, pl_module) -> None:
        types = sorted({type(m).__name__ for m in pl_module.modules() if isinstance(m, _BatchNorm)})
        record = {"world_size": trainer.world_size, "types": types}
        Path(f"{self.path}.rank{trainer.global_rank}").write_text(json.dumps(record))


def syncbn_worker(rank: int, world_size: int, port: int, data_file: str, out_file: str) -> None:
    """Each rank normalizes its shard with CPUSyncBatchNorm and back-propagates its part of a loss."""
    from trainkit.nn.syncbn import CPUSyncBatchNorm

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        data = torch.load(data_file, weights_only=True)
        x, upstream = data["x"], data["upstream"]
        cut = 5  # uneven shards: 5 and N - 5 samples
        shard = slice(0, cut) if rank == 0 else slice(cut, None)
        bn = CPUSyncBatchNorm(x.shape[1]).double()
        with torch.no_grad():
            bn.weight.copy_(data["weight"])
            bn.bias.copy_(data["bias"])
        xs = x[shard].clone().requires_grad_(True)
        y = bn(xs)
        (y * upstream[shard]).sum().backward()
        torch.save(
            {"y": y.detach(), "x_grad": xs.grad, "weight_grad": bn.weight.grad, "bias_grad": bn.bias.grad,
             "running_mean": bn.running_mean, "running_var": bn.running_var},
            f"{out_file}.rank{rank}",
        )
    finally:
        dist.destroy_process_group()


def any_rank_worker(rank: int, world_size: int, port: int, out_file: str) -> None:
    """Rank 1 raises its flag from call 3 on; each rank records what AnyRank decided per call."""
    from trainkit.callbacks.checkpointing import AnyRank

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        vote = AnyRank()
        vote.start()
        decided = [vote(rank == 1 and call >= 3) for call in range(6)]
        vote.stop()
        Path(f"{out_file}.rank{rank}").write_text(json.dumps(decided))
    finally:
        dist.destroy_process_group()
