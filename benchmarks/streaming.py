"""Streaming shards vs the lazy image folder they were packed from: training images/s (issue 16).

    PYTHONPATH=$PWD python benchmarks/streaming.py [--reps 3 --batches 12 --workers 0 1 2] [--cold]

The same 2,000 JPEGs of 256x256 (benchmarks/data.py's folder) are read two ways by the data
module's training loader, with the same settings: batch 64, the ``imagenet`` preset at 224
(random resized crop on the original, flip, colour jitter), uint8 collate, non-persistent
workers. ``lazy folder``: ``data.dataset: image_folder`` (a file opened and decoded per sample).
``streaming``: ``data.dataset: streaming`` on the folder packed by ``trainkit pack`` into a local
folder (the files' own bytes in LitData chunks, decoded the same way). Medians over ``reps``,
the arms alternated; the first batch of each pass (worker start-up) is not timed. ``--cold``
(root only): the page cache is dropped before each pass and the first batch is timed too, the
case the shards are for, data larger than the machine's memory read from the disk.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import images_per_s, make_folder  # noqa: E402  (benchmarks/ is not a package)

ROOT = Path(__file__).resolve().parents[1]


def packed(folder: Path, out: Path) -> Path:
    """``folder`` packed as ``trainkit pack`` would with the benchmark's recipe (kept if present)."""
    from trainkit.cli import main

    if not (out / "trainkit.json").exists():
        args = ["pack", "--config", str(ROOT / "recipes" / "digits_mlp.yaml"), "--data.dataset=image_folder",
                f"--data.root={folder}", "--data.dataset_args={size: [224, 224]}", "--data.val_fraction=0.1",
                "--data.test_fraction=0.1", f"--out={out}", "--workers=2"]
        assert main(args) == 0
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "trainkit-bench"))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--cold", action="store_true",
                   help="drop the page cache before each pass and time its first batch too (root only)")
    opts = p.parse_args()

    import torch

    from trainkit.data.datamodule import DataModule

    torch.set_num_threads(1)
    folder = make_folder(Path(opts.dir) / "jpeg256", 2000, 256)
    shards = packed(folder, Path(opts.dir) / "jpeg256-shards")
    common = dict(batch_size=64, persistent_workers=False, augment={"train": "imagenet"}, mean="imagenet",
                  val_fraction=0.1, test_fraction=0.1)
    print(f"page cache: {'dropped before each pass' if opts.cold else 'warm'}\n"
          "| workers | lazy folder images/s | streaming images/s | streaming / lazy | median of paired ratios |\n"
          "|---|---|---|---|---|")
    for w in opts.workers:
        modules = {
            "lazy": DataModule(dataset="image_folder", root=str(folder), dataset_args={"size": [224, 224]},
                               num_workers=w, **common),
            "streaming": DataModule(dataset="streaming", root=str(shards), num_workers=w, **common),
        }
        for dm in modules.values():
            dm.setup()
        assert modules["lazy"].input_shape == modules["streaming"].input_shape == (3, 224, 224)
        got: dict[str, list[float]] = {a: [] for a in modules}
        for r in range(opts.reps):
            for arm in list(modules) if r % 2 == 0 else list(modules)[::-1]:
                loader = modules[arm].train_dataloader()
                (loader.sampler if arm == "lazy" else loader).set_epoch(r)
                got[arm].append(images_per_s(loader, opts.batches, opts.cold))
        lazy, stream = statistics.median(got["lazy"]), statistics.median(got["streaming"])
        paired = statistics.median(a / b for a, b in zip(got["streaming"], got["lazy"]))
        print(f"| {w} | {lazy:.0f} ({' '.join(f'{v:.0f}' for v in got['lazy'])}) | "
              f"{stream:.0f} ({' '.join(f'{v:.0f}' for v in got['streaming'])}) | {stream / lazy:.3f} | {paired:.3f} |")


if __name__ == "__main__":
    main()
