"""DDP scaling: samples/s of 1 vs 2 gloo processes, trainkit vs a hand-written DDP loop, side by side.

    PYTHONPATH=$PWD python benchmarks/ddp.py [--reps 3] [--workloads digits resnet20]

Arms, each a fresh set of CPU processes with 1 torch thread each (``OMP_NUM_THREADS=1``):
- hand DDP, 1 and 2 processes: the loop a PyTorch user writes, started by
  ``torch.multiprocessing.spawn``: ``init_process_group("gloo")``, ``DistributedDataParallel``,
  each rank slicing its tensors by its shard of trainkit's EpochSampler. With 1 process there is
  no process group and no DDP wrapper, as in trainkit (Lightning's single-device strategy).
- Lightning floor, 1 and 2 processes: a bare LightningModule (no logging, no callbacks but the
  throughput meter) under Lightning's own DDP strategy, fed the same tensor slices: what
  Lightning's loop costs before any tool adds to it (e.g. its blocking per-step broadcast of a
  SIGTERM flag under DDP).
- trainkit, 1 and 2 processes: ``launch/torchrun.sh`` with ``NPROC=1|2`` (what ``trainkit launch
  --torchrun`` runs, and how tests/test_distributed.py trains on 2 gloo processes), with
  ``data.loader: memory``.

Workloads and settings are overhead.py's (digits MLP; resnet20 on synthetic 3x32x32 images, slow
on a CPU), with more digits epochs so that the 2-process run has enough steady steps. The batch
is per process (64 digits, 128 resnet20): 2 processes train a global batch twice as large, with
the recipe's lr (``model.lr_scaling`` is off, rule ``none``), as ``trainkit launch --devices 2``
would. Both contenders start from the same weights (trainkit builds them), see the same shards
in the same order and do the same math (on resnet20 the 2-process hand loop uses trainkit's
CPUSyncBatchNorm, as trainkit does; torch's SyncBatchNorm refuses CPU modules), so the loss of the
final weights on a fixed batch agrees to 5 decimals at each world size (not across world sizes:
the global batch differs). Throughput is global samples/s, rank 0's samples x world size over
rank 0's time of the training steps with the first epoch left out, as trainkit's
``perf/train_samples_per_s``. Prints a markdown table of medians over ``--reps``, the 2-process /
1-process scaling of each contender, and trainkit's 2-process throughput / the hand loop's
(goal: >= 0.95).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

# overhead.py sits beside this script (sys.path[0]): the same workloads, model build and probe
from overhead import ROOT, SGD, Sliced, built, hand_loop, probe_loss, trainkit_args

# digits: more than overhead.py's 6, as 2 processes take 10 steps an epoch
EPOCHS = {"digits": 20, "resnet20": 3}
GOAL = 0.95
TIMEOUT_S = 900  # one trainkit launch; a run takes well under a minute


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hand_worker(rank: int, world: int, port: int, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                batch: int, seed: int, epochs: int, out: str) -> None:
    """One rank of the hand-written loop; rank 0 saves its samples/s and final weights to ``out``."""
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import TensorDataset

    from trainkit.data.loader import EpochSampler
    from trainkit.nn.syncbn import convert_cpu_sync_batchnorm

    torch.set_num_threads(1)
    # spawn hands every rank the parent's tensors in shared memory: without a private copy the
    # ranks would step one set of weights together
    net = copy.deepcopy(net)
    model = net
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        model = DistributedDataParallel(convert_cpu_sync_batchnorm(net))
    opt = torch.optim.SGD(model.parameters(), **SGD)
    seen, seconds = hand_loop(model, opt, x, y, EpochSampler(TensorDataset(x, y), world, rank, seed=seed), batch, epochs)
    if rank == 0:  # every rank steps through a shard of the same length
        torch.save({"samples_per_s": seen * world / seconds, "net": net.state_dict()}, out)
    if world > 1:
        # both ranks leave together: once seen here, rank 0 waited forever in the teardown
        # after rank 1 had already exited
        dist.barrier()
        dist.destroy_process_group()


def lightning_worker(rank: int, world: int, port: int, net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                     batch: int, seed: int, epochs: int, out: str) -> None:
    """One rank of Lightning's floor: a bare LightningModule (no logging, no callbacks but the
    meter) under Lightning's own DDP strategy, fed tensor slices of the rank's shard."""
    import lightning.pytorch as pl
    from torch.utils.data import TensorDataset

    from trainkit.callbacks.throughput import Throughput
    from trainkit.data.loader import EpochSampler
    from trainkit.nn.syncbn import convert_cpu_sync_batchnorm

    torch.set_num_threads(1)
    net = copy.deepcopy(net)  # a private copy, as in hand_worker
    # the variables torchrun would set: Lightning then joins this process instead of spawning
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), NODE_RANK="0")

    class Bare(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = convert_cpu_sync_batchnorm(net) if world > 1 else net

        def training_step(self, b, i):
            return F.cross_entropy(self.net(b[0]), b[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), **SGD)

    meter = Throughput()
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=world, strategy="ddp" if world > 1 else "auto",
                         logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, callbacks=[meter])
    module = Bare()
    trainer.fit(module, Sliced(x, y, EpochSampler(TensorDataset(x, y), world, rank, seed=seed), batch))
    if rank == 0:
        torch.save({"samples_per_s": meter.samples_per_s(), "net": module.net.state_dict()}, out)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def probe(cli, net_state: dict[str, torch.Tensor]) -> float:
    """Probe loss of trainkit's model carrying ``net_state`` (the weights of ``model.net``)."""
    model = copy.deepcopy(cli.model)
    model.net.load_state_dict(net_state)
    return probe_loss(model, *cli.datamodule.splits["train"].tensors)


def spawned(worker, cli, epochs: int, world: int) -> tuple[float, float]:
    """samples/s and probe loss of ``worker`` (hand_worker, lightning_worker) on ``world`` processes."""
    x, y = cli.datamodule.splits["train"].tensors
    out = os.path.abspath(f"{worker.__name__}-{world}-{time.monotonic_ns()}.pt")
    args = (world, free_port(), copy.deepcopy(cli.model.net), x, y, cli.datamodule.batch_size,
            int(os.environ["PL_GLOBAL_SEED"]), epochs, out)
    mp.spawn(worker, args=args, nprocs=world)
    got = torch.load(out, weights_only=True)
    return got["samples_per_s"], probe(cli, got["net"])


def trainkit(cli, workload: str, epochs: int, world: int, name: str) -> tuple[float, float]:
    fit, config, recipe, *overrides = trainkit_args(workload, epochs, "--data.loader=memory", f"--run.name={name}")
    assert (fit, config) == ("fit", "--config"), "torchrun.sh takes the recipe, then the overrides"
    env = {**os.environ, "PYTHON": sys.executable, "NPROC": str(world), "RUN_ID": name, "MASTER_PORT": str(free_port())}
    try:
        proc = subprocess.run(["bash", str(ROOT / "launch" / "torchrun.sh"), recipe, *overrides],
                              env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # seen once on the shared machine: a launch that never created its run dir
        raise SystemExit(f"trainkit on {world} process(es) did not finish in {TIMEOUT_S} s") from None
    if proc.returncode != 0:
        raise SystemExit(f"trainkit on {world} process(es) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    run_dir = Path(next(ln for ln in proc.stdout.splitlines() if ln.startswith("run dir: "))[len("run dir: "):])
    value = json.loads((run_dir / "metrics.json").read_text())["perf/train_samples_per_s"]
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    return value, probe(cli, {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--workloads", nargs="+", default=["digits"], choices=list(EPOCHS))
    opts = p.parse_args()
    # 1 thread per process: on a shared machine spinning intra-op threads swamp everything (overhead.py)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    os.chdir(tempfile.mkdtemp())
    os.environ["PL_GLOBAL_SEED"] = "0"
    rows, verdicts = [], []
    for workload in opts.workloads:
        epochs = EPOCHS[workload]
        cli = built(workload, epochs)
        arms = {
            ("hand DDP", 1): lambda r: spawned(hand_worker, cli, epochs, 1),
            ("hand DDP", 2): lambda r: spawned(hand_worker, cli, epochs, 2),
            ("Lightning floor", 1): lambda r: spawned(lightning_worker, cli, epochs, 1),
            ("Lightning floor", 2): lambda r: spawned(lightning_worker, cli, epochs, 2),
            ("trainkit", 1): lambda r: trainkit(cli, workload, epochs, 1, f"{workload}-1p-r{r}"),
            ("trainkit", 2): lambda r: trainkit(cli, workload, epochs, 2, f"{workload}-2p-r{r}"),
        }
        got: dict[tuple[str, int], list[tuple[float, float]]] = {a: [] for a in arms}
        for r in range(opts.reps):
            names = list(arms) if r % 2 == 0 else list(arms)[::-1]  # alternate: drift hits every arm
            for a in names:
                got[a].append(arms[a](r))
        med = {a: statistics.median(s for s, _ in runs) for a, runs in got.items()}
        for (who, world), runs in got.items():
            scaling = f"{med[who, 2] / med[who, 1]:.3f}" if world == 2 else ""
            rows.append(f"| {workload} | {who} | {world} | {' '.join(f'{s:.0f}' for s, _ in runs)} | {med[who, world]:.0f} | "
                        f"{med[who, world] / med['hand DDP', world]:.3f} | {scaling} | {runs[0][1]:.5f} |")
        ratio = med["trainkit", 2] / med["hand DDP", 2]
        same = all(f"{got['hand DDP', w][0][1]:.5f}" == f"{got['trainkit', w][0][1]:.5f}" for w in (1, 2))
        verdicts.append(f"{workload}: trainkit 2-process / hand DDP 2-process = **{ratio:.3f}** "
                        f"(goal >= {GOAL}: {'met' if ratio >= GOAL else 'NOT met'}); probe losses of hand DDP and "
                        f"trainkit {'agree' if same else 'DIFFER'} at each process count")
    print("| workload | contender | processes | samples/s per rep | median | / hand DDP, same processes | "
          "2 / 1 processes | probe loss |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
