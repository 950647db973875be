"""Input pipeline throughput: the data module's albumentations path vs calling the pipeline directly.

    PYTHONPATH=$PWD python benchmarks/data.py [--reps 3] [--workers 0 1 2]

For the ``cifar`` (3x32x32) and ``imagenet`` (3x128x128 stand-in) presets on synthetic images:
images/s of (a) the albumentations pipeline called in a plain loop on HWC float images (the
floor: no dataset, no collate, no standardization), (b) the data module's train DataLoader with
0, 1 and 2 workers (per worker: images/s divided by max(workers, 1)), and (c) the
``data.loader: memory`` fast path where the preset is batched (cifar). torchvision v2 is not
measured here: the vision extra is not installed on this machine (it pulls a CUDA torch).
Prints a markdown table of medians and the ratio to the direct call per worker.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

SHAPES = {"cifar": [3, 32, 32], "imagenet": [3, 128, 128]}


def module(preset: str, workers: int, loader: str = "dataloader"):
    from trainkit.data.datamodule import DataModule

    dm = DataModule(dataset="synthetic", dataset_args={"shape": SHAPES[preset], "size": 2400, "num_classes": 4},
                    batch_size=128, num_workers=workers, augment={"train": preset}, loader=loader, persistent_workers=False)
    dm.setup()
    return dm


def through_module(preset: str, workers: int, loader: str = "dataloader") -> float:
    dm = module(preset, workers, loader)
    dl = dm.train_dataloader()
    dl.sampler.set_epoch(0)
    it, n = iter(dl), 0
    next(it)  # worker start-up is not per-image cost
    start = time.perf_counter()
    for x, _ in it:
        n += len(x)
    return n / (time.perf_counter() - start)


def direct(preset: str) -> float:
    dm = module(preset, 0)
    pipe, x = dm.pipelines["train"], dm.arrays["train"][0]
    imgs = [np.ascontiguousarray(im.transpose(1, 2, 0)) / np.float32(dm.data.max_value) for im in x]
    start = time.perf_counter()
    for im in imgs:
        pipe(image=im)
    return len(imgs) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    opts = p.parse_args()
    torch.set_num_threads(1)
    print("| preset | arm | images/s per rep | median | per worker | / direct |")
    print("|---|---|---|---|---|---|")
    for preset in SHAPES:
        arms = {"albumentations direct": lambda: direct(preset)}
        for w in opts.workers:
            arms[f"data module, {w} workers"] = lambda w=w: through_module(preset, w)
        if preset == "cifar":
            arms["data module, loader: memory"] = lambda: through_module(preset, 0, "memory")
        got = {a: [f() for _ in range(opts.reps)] for a, f in arms.items()}
        base = statistics.median(got["albumentations direct"])
        for a, runs in got.items():
            med = statistics.median(runs)
            w = int(a.split(", ")[1].split()[0]) if "workers" in a else 1
            print(f"| {preset} | {a} | {' '.join(f'{r:.0f}' for r in runs)} | {med:.0f} | {med / max(w, 1):.0f} | {med / max(w, 1) / base:.2f} |")


if __name__ == "__main__":
    main()
