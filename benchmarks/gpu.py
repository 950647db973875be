"""GPU throughput: a ResNet-50-style network on synthetic 224x224 images, trainkit vs a hand loop.

    PYTHONPATH=$PWD python benchmarks/gpu.py [--steps 30] [--batch 64] [--compile]

Needs a CUDA device; without one it prints why and exits 0 (it is never part of CI). Arms, each
timed over ``--steps`` after 5 warm-up steps, in images/s:
  - hand loop fp32, default layout (the baseline of the channels_last + bf16 goal);
  - hand loop bf16 autocast + channels_last + fused SGD (+ torch.compile with --compile);
  - trainkit with ``trainer.precision: bf16-mixed``, ``model.channels_last: true``,
    ``data.loader: memory`` (the batches already on the device), measured by its
    ``perf/train_samples_per_s``.
torchvision is not required: the network is a bottleneck ResNet-50 layout written here.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


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
    layers, cin = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)], 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
            cin = width * 4
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))


def hand(steps: int, batch: int, fast: bool, compile_: bool) -> float:
    torch.manual_seed(0)
    net = resnet50().cuda()
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    y = torch.randint(0, 1000, (batch,), device="cuda")
    if fast:
        net, x = net.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, fused=fast)
    step_net = torch.compile(net) if compile_ else net
    def step():
        with torch.autocast("cuda", torch.bfloat16, enabled=fast):
            loss = F.cross_entropy(step_net(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def trainkit(steps: int, batch: int) -> float:
    from trainkit.models import ARCHS
    from trainkit.runner import TrainkitCLI

    if "bench_resnet50" not in ARCHS.names():
        # the same network as the hand loop's, under a registry name (trainkit has no resnet50)
        ARCHS.register("bench_resnet50", lambda num_classes, input_shape, activation="relu", norm="batch", dropout=0.0: resnet50(num_classes))
    os.chdir(tempfile.mkdtemp())
    size = int(steps * batch / 0.7) + batch
    cli = TrainkitCLI([
        "fit", "--model.arch=bench_resnet50", "--model.arch_args={}", "--data.dataset=synthetic",
        f"--data.dataset_args={{shape: [3, 224, 224], num_classes: 1000, size: {size}}}", f"--data.batch_size={batch}",
        "--data.loader=memory", "--trainer.precision=bf16-mixed", "--model.channels_last=true", "--trainer.max_epochs=2", "--trainer.logger=false",
        "--trainer.enable_progress_bar=false", "--trainer.limit_val_batches=2", "--diagnostics.monitors=false"])
    return json.loads((cli.run_dir.path / "metrics.json").read_text())["perf/train_samples_per_s"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--compile", action="store_true")
    opts = p.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: benchmarks/gpu.py skipped")
        return
    rows = {"hand loop, fp32, default layout": hand(opts.steps, opts.batch, False, False),
            "hand loop, bf16 + channels_last + fused SGD": hand(opts.steps, opts.batch, True, opts.compile)}
    try:
        rows["trainkit, bf16-mixed, loader: memory"] = trainkit(opts.steps, opts.batch)
    except Exception as e:  # report the hand-loop figures even if the trainkit arm breaks
        print(f"trainkit arm failed: {type(e).__name__}: {e}")
    base = rows["hand loop, bf16 + channels_last + fused SGD"]
    print(f"| arm | images/s | / hand bf16 | ({torch.cuda.get_device_name()}) |\n|---|---|---|---|")
    for a, v in rows.items():
        print(f"| {a} | {v:.0f} | {v / base:.3f} | |")


if __name__ == "__main__":
    main()
