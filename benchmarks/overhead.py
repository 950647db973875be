"""Per-step overhead: trainkit vs a hand-written PyTorch loop vs plain Lightning, side by side.

Plus "Lightning floor": a bare LightningModule fed tensor slices (no DataLoader), without
logging or callbacks, i.e. what Lightning's own loop costs before any tool adds to it.

    PYTHONPATH=$PWD python benchmarks/overhead.py [--reps 3] [--workloads digits resnet20]

Workloads (CPU, ``--threads`` torch threads): (a) the digits MLP of recipes/digits_mlp.yaml (small, overhead-bound), with
``data.loader: memory`` and with the DataLoader path; (b) resnet20 on synthetic 3x32x32
images, batches of 128 (compute-bound). All contenders start from the same weights (trainkit
builds them), see the same batches in the same order (trainkit's EpochSampler), and run plain
SGD with momentum (no weight decay, dropout or schedule; torch's fused kernel in every arm, as
trainkit's NaN guard uses it), so the math is identical: the loss of
the final weights on a fixed batch must agree to 5 decimals. Throughput is samples/s of the
training steps with the first epoch left out (validation off or not counted), as trainkit's
``perf/train_samples_per_s``, by the wall clock and by the main thread's CPU clock
(``time.thread_time``; with one torch thread that is the step's own work, which other jobs on a
shared machine inflate far less than the wall clock). Prints a markdown table of medians over
``--reps`` with the step time of each arm over the Lightning floor's (goal for trainkit's memory
path: <= 1.15) and over the hand loop's. ``--arms`` runs a subset (e.g. while profiling).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback

ROOT = Path(__file__).resolve().parents[1]
# trainkit's NaN guard runs torch's fused SGD kernel (its found_inf skips a non-finite step on the
# device), so every arm steps with it: the same math and the same optimizer cost in every arm
SGD = {"lr": 0.05, "momentum": 0.9, "fused": True}
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


class StepClock(Callback):
    """Samples/s of the training steps by the wall and the CPU clock, the first epoch left out
    (each epoch from its start to the end of its last batch, as trainkit's Throughput). The CPU
    clock is the main thread's (``time.thread_time``), where every op runs with one torch
    thread; the process clock sums every thread's and costs milliseconds a call with many
    threads. Given to trainkit as a user adds a callback (``--trainer.callbacks+=overhead.StepClock``)."""

    def __init__(self) -> None:
        self.first: int | None = None
        self.samples, self.wall, self.cpu = 0, 0.0, 0.0
        self._n, self._t = 0, (0.0, 0.0)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.first = trainer.current_epoch if self.first is None else self.first
        self._n, self._t = 0, (time.perf_counter(), time.thread_time())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._n += len(batch[0])
        if batch_idx + 1 == trainer.num_training_batches and trainer.current_epoch != self.first:
            self.samples += self._n
            self.wall += time.perf_counter() - self._t[0]
            self.cpu += time.thread_time() - self._t[1]

    def rates(self) -> tuple[float, float]:
        """(samples/s by the wall clock, samples/s by the CPU clock)."""
        return self.samples / self.wall, self.samples / self.cpu


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
              batch: int, epochs: int, clock=time.perf_counter) -> tuple[int, float]:
    """The loop a PyTorch user writes: slice tensors by the sampler's permutation, step, zero
    grads. Returns this process's samples and seconds of training (by ``clock``), the first
    epoch left out."""
    seen, seconds = 0, 0.0
    model.train()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler))
        start = clock()
        for k in range(0, len(order), batch):
            idx = order[k : k + batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        if epoch > 0:
            seconds += clock() - start
            seen += len(order)
    return seen, seconds


def hand(workload: str, epochs: int) -> tuple[float, float, float]:
    """The hand-written loop on trainkit's weights and batch order: (wall samples/s, CPU
    samples/s, probe loss); the CPU figure from a second, identical run on the CPU clock."""
    from trainkit.data.loader import EpochSampler

    cli = built(workload, epochs)
    rates = []
    for clock in (time.perf_counter, time.thread_time):
        net, (x, y) = copy.deepcopy(cli.model), cli.datamodule.splits["train"].tensors
        opt = torch.optim.SGD(net.parameters(), **SGD)
        sampler = EpochSampler(cli.datamodule.splits["train"], 1, 0, seed=int(os.environ.get("PL_GLOBAL_SEED", 0)))
        seen, seconds = hand_loop(net, opt, x, y, sampler, cli.datamodule.batch_size, epochs, clock)
        rates.append(seen / seconds)
    return rates[0], rates[1], probe_loss(net, x, y)


def plain_lightning(workload: str, epochs: int, floor: bool = False) -> tuple[float, float, float]:
    """Lightning as a user writes it: a DataLoader over a TensorDataset, ``self.log`` each step.

    ``floor``: the least any tool built on Lightning's loop can cost: no ``self.log``, no
    callbacks but the meter, tensor slices in the same order instead of a DataLoader.
    """
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

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
            return torch.optim.SGD(self.parameters(), **SGD)

    model, meter = Plain(copy.deepcopy(cli.model)), StepClock()
    sampler = EpochSampler(ds, 1, 0, seed=int(os.environ.get("PL_GLOBAL_SEED", 0)))
    b = cli.datamodule.batch_size
    loader = Sliced(*ds.tensors, sampler, b) if floor else DataLoader(ds, batch_size=b, sampler=sampler)
    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, callbacks=[meter], accelerator="cpu", devices=1)
    trainer.fit(model, loader)
    return (*meter.rates(), probe_loss(model.net, *ds.tensors))


def trainkit(workload: str, epochs: int, loader: str, name: str) -> tuple[float, float, float]:
    from trainkit.runner import TrainkitCLI

    clock = "--trainer.callbacks+=overhead.StepClock"  # benchmarks/ is sys.path[0]
    cli = TrainkitCLI(trainkit_args(workload, epochs, f"--data.loader={loader}", f"--run.name={name}", clock))
    meter = next(c for c in cli.trainer.callbacks if type(c).__name__ == "StepClock")
    net = copy.deepcopy(cli.model)
    net.load_state_dict(torch.load(cli.run_dir.checkpoints / "last.ckpt", weights_only=True)["state_dict"])
    return (*meter.rates(), probe_loss(net, *cli.datamodule.splits["train"].tensors))


ARMS = ("hand loop", "plain Lightning", "Lightning floor", "trainkit (memory)", "trainkit (dataloader)")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
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
        every = {
            "hand loop": lambda r: hand(workload, epochs),
            "plain Lightning": lambda r: plain_lightning(workload, epochs),
            "Lightning floor": lambda r: plain_lightning(workload, epochs, floor=True),
            "trainkit (memory)": lambda r: trainkit(workload, epochs, "memory", f"{workload}-m{r}"),
            "trainkit (dataloader)": lambda r: trainkit(workload, epochs, "dataloader", f"{workload}-d{r}"),
        }
        arms = {a: every[a] for a in ARMS if a in opts.arms}
        got: dict[str, list[tuple[float, float, float]]] = {a: [] for a in arms}
        for r in range(opts.reps):
            names = list(arms) if r % 2 == 0 else list(arms)[::-1]  # alternate: drift hits every arm
            for a in names:
                got[a].append(arms[a](r))
        med = {a: (statistics.median(w for w, _, _ in runs), statistics.median(c for _, c, _ in runs)) for a, runs in got.items()}
        for a, runs in got.items():
            ratios = []
            for base in ("Lightning floor", "hand loop"):
                ratios += [f"{med[base][i] / med[a][i]:.3f}" if base in med else "" for i in (0, 1)]
            rows.append(f"| {workload} | {a} | {' '.join(f'{w:.0f}' for w, _, _ in runs)} | {med[a][0]:.0f} | "
                        f"{' '.join(f'{c:.0f}' for _, c, _ in runs)} | {med[a][1]:.0f} | {' | '.join(ratios)} | {runs[0][2]:.5f} |")
    print("| workload | arm | samples/s per rep (wall) | median | samples/s per rep (CPU) | median | "
          "step time / floor (wall) | / floor (CPU) | / hand loop (wall) | / hand loop (CPU) | probe loss |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
