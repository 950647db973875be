"""Per-step overhead: trainkit vs a hand-written PyTorch loop vs plain Lightning, side by side.

Plus "Lightning floor": a bare LightningModule fed tensor slices (no DataLoader), without
logging or callbacks, i.e. what Lightning's own loop costs before any tool adds to it.

    PYTHONPATH=$PWD python benchmarks/overhead.py [--reps 3] [--workloads digits resnet20]

Workloads (CPU, ``--threads`` torch threads): (a) the digits MLP of recipes/digits_mlp.yaml (small, overhead-bound), with
``data.loader: memory`` and with the DataLoader path; (b) resnet20 on synthetic 3x32x32
images, batches of 128 (compute-bound). All contenders start from the same weights (trainkit
builds them), see the same batches in the same order (trainkit's EpochSampler), and run plain
SGD with momentum (no weight decay, dropout or schedule), so the math is identical: the loss of
the final weights on a fixed batch must agree to 5 decimals. Throughput is samples/s of the
training steps with the first epoch left out (validation off or not counted), as trainkit's
``perf/train_samples_per_s``. Prints a markdown table of medians over ``--reps`` and ratios.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.logger=false",
          "--data.num_workers=0", "--model.dropout=0", "--model.optimizer={name: sgd, lr: 0.05, momentum: 0.9}",
          "--diagnostics.monitors=false"]
WORKLOADS = {
    "digits": (["--config", str(ROOT / "recipes" / "digits_mlp.yaml")], 6),
    "resnet20": (["--config", str(ROOT / "recipes" / "digits_mlp.yaml"), "--model.arch=resnet20", "--model.arch_args={}",
                  "--data.dataset=synthetic", "--data.dataset_args={shape: [3, 32, 32], num_classes: 10, size: 1100}",
                  "--data.batch_size=128"], 3),
}


def trainkit_args(workload: str, epochs: int, *extra: str) -> list[str]:
    return ["fit", *WORKLOADS[workload][0], *COMMON, f"--trainer.max_epochs={epochs}", *extra]


def built(workload: str, epochs: int):
    """trainkit's model and data module for the workload, built but not trained."""
    from trainkit.runner import TrainkitCLI

    return TrainkitCLI(trainkit_args(workload, epochs, "--run.name=build"), run_stage=False)


def probe_loss(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    with torch.no_grad():
        return float(F.cross_entropy(net(x[:512]), y[:512]))


class Sliced:
    """Tensor slices in a sampler's order, one batch per step: a loader without a DataLoader
    (Lightning calls ``set_epoch`` on a loader's ``sampler`` each epoch, as on a DataLoader's)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, sampler, batch: int):
        self.x, self.y, self.sampler, self.batch_sampler, self.batch = x, y, sampler, None, batch

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch)

    def __iter__(self):
        order = torch.tensor(list(self.sampler))
        for k in range(0, len(order), self.batch):  # sliced per step, as the hand loop does
            idx = order[k : k + self.batch]
            yield self.x[idx], self.y[idx]


def hand_loop(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, sampler,
              batch: int, epochs: int) -> tuple[int, float]:
    """The loop a PyTorch user writes: slice tensors by the sampler's permutation, step, zero
    grads. Returns this process's samples and seconds of training, the first epoch left out."""
    seen, seconds = 0, 0.0
    model.train()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler))
        start = time.perf_counter()
        for k in range(0, len(order), batch):
            idx = order[k : k + batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        if epoch > 0:
            seconds += time.perf_counter() - start
            seen += len(order)
    return seen, seconds


def hand(workload: str, epochs: int) -> tuple[float, float]:
    """The hand-written loop on trainkit's weights and batch order."""
    from trainkit.data.loader import EpochSampler

    cli = built(workload, epochs)
    net, (x, y) = copy.deepcopy(cli.model), cli.datamodule.splits["train"].tensors
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    sampler = EpochSampler(cli.datamodule.splits["train"], 1, 0, seed=int(os.environ.get("PL_GLOBAL_SEED", 0)))
    seen, seconds = hand_loop(net, opt, x, y, sampler, cli.datamodule.batch_size, epochs)
    return seen / seconds, probe_loss(net, x, y)


def plain_lightning(workload: str, epochs: int, floor: bool = False) -> tuple[float, float]:
    """Lightning as a user writes it: a DataLoader over a TensorDataset, ``self.log`` each step.

    ``floor``: the least any tool built on Lightning's loop can cost: no ``self.log``, no
    callbacks but the meter, tensor slices in the same order instead of a DataLoader.
    """
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from trainkit.callbacks.throughput import Throughput
    from trainkit.data.loader import EpochSampler

    cli = built(workload, epochs)
    ds = cli.datamodule.splits["train"]

    class Plain(pl.LightningModule):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def training_step(self, batch, i):
            x, y = batch
            loss = F.cross_entropy(self.net(x), y)
            if not floor:
                self.log("train/loss", loss, on_step=True)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    model, meter = Plain(copy.deepcopy(cli.model)), Throughput()
    sampler = EpochSampler(ds, 1, 0, seed=int(os.environ.get("PL_GLOBAL_SEED", 0)))
    b = cli.datamodule.batch_size
    loader = Sliced(*ds.tensors, sampler, b) if floor else DataLoader(ds, batch_size=b, sampler=sampler)
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, callbacks=[meter], accelerator="cpu", devices=1)
    trainer.fit(model, loader)
    return meter.samples_per_s(), probe_loss(model.net, *ds.tensors)


def trainkit(workload: str, epochs: int, loader: str, name: str) -> tuple[float, float]:
    from trainkit.runner import TrainkitCLI

    cli = TrainkitCLI(trainkit_args(workload, epochs, f"--data.loader={loader}", f"--run.name={name}"))
    value = json.loads((cli.run_dir.path / "metrics.json").read_text())["perf/train_samples_per_s"]
    net = copy.deepcopy(cli.model)
    net.load_state_dict(torch.load(cli.run_dir.checkpoints / "last.ckpt", weights_only=True)["state_dict"])
    return value, probe_loss(net, *cli.datamodule.splits["train"].tensors)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    p.add_argument("--threads", type=int, default=1, help="torch threads, the same for every arm")
    opts = p.parse_args()
    # on a shared machine, intra-op threads of small ops spin against other processes (200x
    # slower seen here with 2 threads on 2 busy cores); one fixed count keeps arms comparable
    torch.set_num_threads(opts.threads)
    os.chdir(tempfile.mkdtemp())
    os.environ["PL_GLOBAL_SEED"] = "0"
    rows = []
    for workload in opts.workloads:
        epochs = WORKLOADS[workload][1]
        arms = {
            "hand loop": lambda r: hand(workload, epochs),
            "plain Lightning": lambda r: plain_lightning(workload, epochs),
            "Lightning floor": lambda r: plain_lightning(workload, epochs, floor=True),
            "trainkit (memory)": lambda r: trainkit(workload, epochs, "memory", f"{workload}-m{r}"),
            "trainkit (dataloader)": lambda r: trainkit(workload, epochs, "dataloader", f"{workload}-d{r}"),
        }
        got: dict[str, list[tuple[float, float]]] = {a: [] for a in arms}
        for r in range(opts.reps):
            names = list(arms) if r % 2 == 0 else list(arms)[::-1]  # alternate: drift hits every arm
            for a in names:
                got[a].append(arms[a](r))
        base = statistics.median(s for s, _ in got["hand loop"])
        for a, runs in got.items():
            med = statistics.median(s for s, _ in runs)
            rows.append(f"| {workload} | {a} | {' '.join(f'{s:.0f}' for s, _ in runs)} | {med:.0f} | "
                        f"{base / med:.3f} | {runs[0][1]:.5f} |")
    print("| workload | arm | samples/s per rep | median | step time / hand loop | probe loss |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
