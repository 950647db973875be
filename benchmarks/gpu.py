"""GPU throughput: trainkit vs a hand-written loop with the same settings, and a host-sync check.

    PYTHONPATH=$PWD python benchmarks/gpu.py [--steps 50] [--warmup 10] [--workloads resnet18 resnet50]
    PYTHONPATH=$PWD python benchmarks/gpu.py --cpu-smoke   # every code path, tiny, on the CPU

Needs a CUDA device: without one it prints that nothing was measured and exits 0 (it is never
part of CI). ``--cpu-smoke`` runs every arm for 2 steps on tiny inputs on the CPU (no CUDA-only
parts: no timing claims, no sync check), so the script can be checked on a machine without GPU.

Workloads, each from ``data.loader: memory`` (the split on the device, batches sliced in
EpochSampler order; the hand loop slices the same tensors in the same order):
- ``resnet50``: a bottleneck ResNet-50 (written here; torchvision is not required) on synthetic
  3x224x224 images, batch 64: compute-bound;
- ``resnet18``: trainkit's CIFAR ResNet-18 (3x3 stem) on synthetic 3x32x32 images, batch 512:
  overhead-bound, where a host sync or Python work per step shows.

Settings, each shared by both contenders: fp32 eager; bf16 autocast + channels_last; the same
plus ``torch.compile`` (``model.compile: true``). Both run on one device (``--trainer.devices=1``),
fused SGD, trainkit's GPU defaults (TF32 matmuls, cuDNN autotuning) and the NaN guard's device
work (gradient norms, the loss check, ``found_inf``; the hand loop reads its flag every 50 steps
as trainkit does at its log interval). trainkit runs with logging and monitors off (the hand loop
has neither). Timing is synchronized (``torch.cuda.synchronize`` before and after) over the same
``--steps`` optimizer steps after ``--warmup`` steps (compilation included in the warm-up).

Sync check (a test on CUDA): trainkit's resnet18 run with its defaults (NaN guard, monitors every
50 steps, logging every 10) under ``torch.cuda.set_sync_debug_mode("error")`` during its ordinary
steps (neither logging nor monitor steps): any synchronizing CUDA call raises; the line says
PASS or which call failed. With two or more GPUs: resnet18 on 2 GPUs, trainkit (torchrun, NCCL)
vs hand DDP. Goals (issue 17): resnet18 trainkit >= 0.97x the hand loop; bf16 + channels_last
>= 1.3x fp32; compile >= 1.1x eager.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from lightning.pytorch import Callback

ROOT = Path(__file__).resolve().parents[1]
SGD = {"lr": 0.05, "momentum": 0.9}
SETTINGS = {  # name: (bf16 + channels_last, compile)
    "fp32": (False, False),
    "bf16 + channels_last": (True, False),
    "bf16 + channels_last + compile": (True, True),
}
CHECK_EVERY = 50  # the hand loop's NaN check interval (trainkit: its log interval, set equal)


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * 4
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return F.relu(self.body(x) + self.skip(x))


def resnet50(num_classes: int = 1000) -> nn.Module:
    """ResNet-50's layout; trainkit builds it by class path (``--model.arch=gpu.resnet50``)."""
    layers, cin = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)], 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
            cin = width * 4
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))


def workloads(smoke: bool) -> dict[str, list[str]]:
    """trainkit arguments of each workload (``--cpu-smoke``: tiny inputs)."""
    size50, size18 = (16, 8) if smoke else (224, 32)
    return {
        "resnet50": ["--model.arch=gpu.resnet50", "--model.arch_args={}",
                     f"--data.dataset_args={{shape: [3, {size50}, {size50}], num_classes: {10 if smoke else 1000}, size: SIZE}}",
                     f"--data.batch_size={4 if smoke else 64}"],
        "resnet18": ["--model.arch=resnet18", "--model.arch_args={}",
                     f"--data.dataset_args={{shape: [3, {size18}, {size18}], num_classes: 10, size: SIZE}}",
                     f"--data.batch_size={8 if smoke else 512}"],
    }


def trainkit_args(workload: list[str], steps: int, settings: tuple[bool, bool], smoke: bool, *extra: str) -> list[str]:
    fast, compile_ = settings
    batch = int(next(a for a in workload if a.startswith("--data.batch_size=")).split("=")[1])
    # one epoch holds every timed step (an epoch end would add validation and a checkpoint)
    size = int((steps + 1) * batch / 0.7) + 4 * batch
    args = [a.replace("SIZE", str(size)) for a in workload]
    return ["fit", "--config", str(ROOT / "recipes" / "digits_mlp.yaml"), *args, "--data.dataset=synthetic",
            "--data.loader=memory", "--data.num_workers=0", "--model.dropout=0",
            f"--model.optimizer={{name: sgd, lr: {SGD['lr']}, momentum: {SGD['momentum']}}}",
            "--trainer.devices=1", f"--trainer.accelerator={'cpu' if smoke else 'gpu'}",
            f"--trainer.precision={'bf16-mixed' if fast else '32-true'}", f"--model.channels_last={str(fast).lower()}",
            f"--model.compile={str(compile_ and not smoke).lower()}", f"--trainer.max_steps={steps}",
            "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            *extra]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock(Callback):
    """Synchronized images/s over steps ``[warmup, warmup + steps)``; written to ``out``."""

    def __init__(self, warmup: int, steps: int, out: str):
        self.warmup, self.steps, self.out = warmup, steps, out
        self._start = 0.0
        self._images = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            sync(pl_module.device)
            self._start, self._images = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step > self.warmup:
            self._images += len(batch[0]) * trainer.world_size
        if trainer.global_step == self.warmup + self.steps and trainer.is_global_zero:
            sync(pl_module.device)
            Path(self.out).write_text(json.dumps({"images_per_s": self._images / (time.perf_counter() - self._start)}))


class SyncCheck(Callback):
    """``torch.cuda.set_sync_debug_mode("error")`` from the start of each ordinary step (neither a
    logging nor a monitor step) to the start of the next: a synchronizing CUDA call raises."""

    def __init__(self, log_every: int = 10, monitor_every: int = 50):
        self.log_every, self.monitor_every = log_every, monitor_every
        self.checked = 0

    def _set(self, on: bool) -> None:
        if torch.cuda.is_available():  # --cpu-smoke: the plumbing only, nothing to check
            torch.cuda.set_sync_debug_mode("error" if on else "default")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        k = trainer.global_step
        ordinary = (k + 1) % self.log_every != 0 and k % self.monitor_every != 0
        self._set(ordinary)
        self.checked += ordinary

    def on_validation_start(self, trainer, pl_module) -> None:
        self._set(False)

    on_train_epoch_end = on_train_end = on_exception = lambda self, *a: self._set(False)  # noqa: E731


def trainkit_arm(args: list[str], warmup: int, steps: int) -> float:
    from trainkit.runner import TrainkitCLI

    out = Path(tempfile.mkdtemp()) / "clock.json"
    clock = {"class_path": "gpu.Clock", "init_args": {"warmup": warmup, "steps": steps, "out": str(out)}}
    TrainkitCLI([*args, "--trainer.logger=false", "--diagnostics.monitors=false",
                 f"--trainer.log_every_n_steps={CHECK_EVERY}", f"--trainer.callbacks+={json.dumps(clock)}"])
    return json.loads(out.read_text())["images_per_s"]


def hand_arm(args: list[str], warmup: int, steps: int, settings: tuple[bool, bool], device: torch.device) -> float:
    """The loop a user writes with the same settings, on trainkit's weights, data and order."""
    from trainkit.data.loader import EpochSampler
    from trainkit.runner import TrainkitCLI

    fast, compile_ = settings
    cli = TrainkitCLI(args, run_stage=False)
    net = copy.deepcopy(cli.model.net).to(device)
    ds = cli.datamodule.splits["train"]
    x, y = (t.to(device) for t in ds.tensors)
    if fast:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), **SGD, fused=True)
    params = list(net.parameters())
    step_net = torch.compile(net) if compile_ and device.type == "cuda" else net
    sampler = EpochSampler(ds, 1, 0, seed=0)
    order = torch.tensor(list(sampler), device=device)
    batch = cli.datamodule.batch_size
    flags = torch.zeros(CHECK_EVERY + 1, device=device)

    def step(k: int) -> None:
        idx = order[(k * batch) % (len(order) - batch):][:batch]
        xb = x[idx].contiguous(memory_format=torch.channels_last) if fast else x[idx]
        with torch.autocast(device.type, torch.bfloat16, enabled=fast):
            loss = F.cross_entropy(step_net(xb), y[idx])
        bad_loss = torch.isfinite(loss.detach()).logical_not_()  # the NaN guard's device work
        loss.register_hook(lambda g: g.masked_fill(bad_loss, math.nan))
        loss.backward()
        norms = torch.stack(torch._foreach_norm([p.grad for p in params]))
        flags[k % CHECK_EVERY].copy_(norms.sum())
        opt.found_inf = torch.isfinite(norms.sum()).logical_not_().float()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if (k + 1) % CHECK_EVERY == 0:
            assert all(math.isfinite(v) for v in flags.tolist()), "non-finite step"

    net.train()
    for k in range(warmup):
        step(k)
    sync(device)
    start = time.perf_counter()
    for k in range(warmup, warmup + steps):
        step(k)
    sync(device)
    return steps * batch / (time.perf_counter() - start)


def sync_check(args: list[str]) -> str:
    """trainkit's defaults under the sync debug mode on ordinary steps: PASS or the failing call."""
    from trainkit.runner import TrainkitCLI

    spec = json.dumps({"class_path": "gpu.SyncCheck", "init_args": {"log_every": 10, "monitor_every": 50}})
    try:
        TrainkitCLI([*args, "--trainer.logger=false", "--trainer.log_every_n_steps=10", f"--trainer.callbacks+={spec}"])
    except Exception as e:  # the first synchronizing call, raised by the debug mode
        return f"FAIL: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    finally:
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("default")
    return "PASS: no synchronizing CUDA call in the ordinary steps"


def ddp_arms(workload: list[str], warmup: int, steps: int, smoke: bool = False) -> dict[str, float]:
    """resnet18 on 2 GPUs: trainkit under launch/torchrun.sh (NCCL) vs a hand DDP loop
    (``smoke``: 2 gloo processes on the CPU)."""
    out = Path(tempfile.mkdtemp())
    args = trainkit_args(workload, warmup + steps, SETTINGS["bf16 + channels_last"], smoke)[3:]  # no fit --config R
    clock = {"class_path": "gpu.Clock", "init_args": {"warmup": warmup, "steps": steps, "out": str(out / "tk.json")}}
    env = {**os.environ, "NPROC": "2", "RUN_ID": "gpu-ddp", "PYTHONPATH": f"{ROOT}:{ROOT / 'benchmarks'}",
           "PYTHON": sys.executable, "MASTER_PORT": str(free_port())}
    extra = [a for a in args if not a.startswith("--trainer.devices")]
    subprocess.run(["bash", str(ROOT / "launch" / "torchrun.sh"), str(ROOT / "recipes" / "digits_mlp.yaml"), *extra,
                    "--trainer.logger=false", "--diagnostics.monitors=false", f"--trainer.log_every_n_steps={CHECK_EVERY}",
                    f"--trainer.callbacks+={json.dumps(clock)}"], env=env, check=True, cwd=out)
    import torch.multiprocessing as mp

    mp.spawn(hand_ddp_worker, args=(2, free_port(), workload, warmup, steps, str(out / "hand.json"), smoke), nprocs=2)
    return {"trainkit, 2 GPUs": json.loads((out / "tk.json").read_text())["images_per_s"],
            "hand DDP, 2 GPUs": json.loads((out / "hand.json").read_text())["images_per_s"]}


def hand_ddp_worker(rank: int, world: int, port: int, workload: list[str], warmup: int, steps: int, out: str,
                    smoke: bool = False) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from trainkit.data.loader import EpochSampler
    from trainkit.nn.syncbn import convert_cpu_sync_batchnorm
    from trainkit.runner import TrainkitCLI

    os.chdir(tempfile.mkdtemp())
    if not smoke:
        torch.cuda.set_device(rank)
    dist.init_process_group("gloo" if smoke else "nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    args = trainkit_args(workload, warmup + steps, SETTINGS["bf16 + channels_last"], smoke)
    cli = TrainkitCLI(args, run_stage=False)
    device = torch.device("cpu") if smoke else torch.device("cuda", rank)
    # as trainkit under DDP: batch norm synced across ranks (torch's SyncBatchNorm is CUDA-only)
    convert = convert_cpu_sync_batchnorm if smoke else nn.SyncBatchNorm.convert_sync_batchnorm
    net = convert(copy.deepcopy(cli.model.net)).to(device, memory_format=torch.channels_last)
    model = DistributedDataParallel(net, device_ids=None if smoke else [rank])
    ds = cli.datamodule.splits["train"]
    x, y = (t.to(device) for t in ds.tensors)
    opt = torch.optim.SGD(model.parameters(), **SGD, fused=True)
    order = torch.tensor(list(EpochSampler(ds, world, rank, seed=0)), device=device)
    batch = cli.datamodule.batch_size
    for k in range(warmup + steps):
        if k == warmup:
            sync(device)
            start = time.perf_counter()
        idx = order[(k * batch) % (len(order) - batch):][:batch]
        with torch.autocast(device.type, torch.bfloat16):
            loss = F.cross_entropy(model(x[idx].contiguous(memory_format=torch.channels_last)), y[idx])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    if rank == 0:
        Path(out).write_text(json.dumps({"images_per_s": steps * batch * world / (time.perf_counter() - start)}))
    dist.barrier()
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--workloads", nargs="+", default=["resnet18", "resnet50"], choices=["resnet18", "resnet50"])
    p.add_argument("--cpu-smoke", action="store_true", help="every arm for 2 steps on tiny inputs, on the CPU")
    opts = p.parse_args()
    smoke = opts.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        print("no CUDA device: benchmarks/gpu.py measured nothing (run it where a GPU is lent; --cpu-smoke checks the code paths)")
        return
    if smoke:
        opts.steps, opts.warmup, opts.reps = 2, 1, 1
    device = torch.device("cpu" if smoke else "cuda")
    os.chdir(tempfile.mkdtemp())
    # trainkit's GPU defaults for image training on CUDA, given to the hand loop as well
    torch.set_float32_matmul_precision("high" if not smoke else "highest")
    torch.backends.cudnn.benchmark = not smoke
    name = torch.cuda.get_device_name() if not smoke else "CPU smoke run: no timing claims"
    rows, got = [], {}
    for wl in opts.workloads:
        workload = workloads(smoke)[wl]
        for setting, flags in SETTINGS.items():
            args = trainkit_args(workload, opts.warmup + opts.steps, flags, smoke)
            hand = [hand_arm(args, opts.warmup, opts.steps, flags, device) for _ in range(opts.reps)]
            tk = [trainkit_arm([*args, f"--run.name={wl}-{len(got)}-{r}"], opts.warmup, opts.steps) for r in range(opts.reps)]
            got[(wl, setting)] = (statistics.median(hand), statistics.median(tk))
            rows.append(f"| {wl} | {setting} | {got[(wl, setting)][0]:.0f} | {got[(wl, setting)][1]:.0f} | "
                        f"{got[(wl, setting)][1] / got[(wl, setting)][0]:.3f} |")
    print(f"## {name}; {opts.steps} steps after {opts.warmup} warm-up steps, median of {opts.reps}\n")
    print("| workload | settings | hand loop images/s | trainkit images/s | trainkit / hand |\n|---|---|---|---|---|")
    print("\n".join(rows))
    for wl in opts.workloads:
        fp32, fast, comp = (got[(wl, s)] for s in SETTINGS)
        print(f"\n{wl}: bf16 + channels_last / fp32 = {fast[0] / fp32[0]:.2f} (hand), {fast[1] / fp32[1]:.2f} (trainkit) "
              f"[goal >= 1.3]; compile / eager = {comp[0] / fast[0]:.2f} (hand), {comp[1] / fast[1]:.2f} (trainkit) [goal >= 1.1]")
    if "resnet18" in opts.workloads:
        r18 = got[("resnet18", "bf16 + channels_last")]
        print(f"resnet18 trainkit / hand (bf16 + channels_last) = {r18[1] / r18[0]:.3f} [goal >= 0.97]")
        steps = 3 if smoke else 120
        args = trainkit_args(workloads(smoke)["resnet18"], steps, SETTINGS["bf16 + channels_last"], smoke, "--run.name=sync")
        print(f"sync check (resnet18, trainkit defaults, {steps} steps):", sync_check(args))
        if smoke or torch.cuda.device_count() >= 2:
            for arm, value in ddp_arms(workloads(smoke)["resnet18"], opts.warmup, opts.steps, smoke).items():
                print(f"| resnet18 DDP | {arm} | {value:.0f} images/s |")
        else:
            print("one GPU: the 2-GPU DDP arms were not run")


if __name__ == "__main__":
    main()
