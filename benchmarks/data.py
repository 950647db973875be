"""Lazy image folders, side by side: peak memory, throughput, start-up (issue 16).

    PYTHONPATH=$PWD python benchmarks/data.py rss [--small 2000 --large 20000]
    PYTHONPATH=$PWD python benchmarks/data.py throughput [--reps 3 --workers 0 1 2]
    PYTHONPATH=$PWD python benchmarks/data.py startup [--files 100000]

``rss``: peak resident memory of a 2-step ``trainkit fit`` (cnn, the recipe's 2 workers, W&B
offline) on folders of ``small`` and ``large`` 128x128 JPEGs: the main process's peak
(``ru_maxrss``) and the peak of the whole process tree (main + workers + W&B service, summed
over /proc every 50 ms), and their ratio large/small.

``throughput``: images/s of the data module's training loader on 256x256 JPEG originals with
the ``imagenet`` preset at 224 (decode + albumentations + uint8 collate) vs a hand-written
torch Dataset doing the same decode + albumentations + collate with the same DataLoader
settings (batch 64, the same workers), medians over ``reps``, the arms alternated.

``startup``: time from ``trainkit fit`` to its first training step on a folder of ``files``
tiny JPEGs, the part spent scanning (listing and headers), for a first start and for a
second one that finds the cached index.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXE = str(Path(sys.executable).with_name("trainkit"))


def make_folder(root: Path, n: int, size: int, classes: int = 10) -> Path:
    """``n`` random-texture JPEGs of ``size`` x ``size`` in ``classes`` folders (kept if present)."""
    import cv2

    if (root / "done").exists():
        return root
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (64, size, size, 3), dtype=np.uint8)
    for i in range(n):
        d = root / f"c{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(d / f"{i}.jpg"), base[i % 64] // 2 + (i % classes) * 12)
    (root / "done").write_text(str(n))
    return root


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for t in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{t}/children").read_text().split()]
        except OSError:
            continue
    return total


def fit_peak(folder: Path, name: str) -> tuple[float, float]:
    """(main peak MiB, tree peak MiB) of a 2-step fit."""
    cmd = [EXE, "fit", "--config", str(ROOT / "recipes" / "image_folder_cnn.yaml"), f"--data.root={folder}",
           "--trainer.max_steps=2", "--trainer.limit_val_batches=2", "--trainer.enable_progress_bar=false",
           "--data.dataset_args={size: [128, 128]}", f"--run.name={name}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.05)
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    main_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB -> MiB, the largest child
    return main_peak, peak / 2**20


def rss(opts: argparse.Namespace) -> None:
    work = Path(opts.dir)
    rows = {}
    for n in (opts.small, opts.large):
        folder = make_folder(work / f"jpeg128_{n}", n, 128)
        fit_peak(folder, f"warm{n}")  # the index cache and the file pages, as a second start
        rows[n] = fit_peak(folder, f"rss{n}")
    print("| images | main peak MiB | tree peak MiB |\n|---|---|---|")
    for n, (m, t) in rows.items():
        print(f"| {n} | {m:.0f} | {t:.0f} |")
    (ms, ts), (ml, tl) = rows[opts.small], rows[opts.large]
    print(f"| ratio {opts.large}/{opts.small} | {ml / ms:.3f} | {tl / ts:.3f} |")


class Hand:
    """The Dataset a user writes: decode with OpenCV, RGB, albumentations, CHW uint8 tensor."""

    def __init__(self, files: list[str], labels: list[int], pipe) -> None:
        self.files, self.labels, self.pipe = files, labels, pipe

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        import cv2
        import torch

        img = cv2.cvtColor(cv2.imdecode(np.fromfile(self.files[i], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        return torch.from_numpy(self.pipe(image=img)["image"]).permute(2, 0, 1), self.labels[i]


def images_per_s(loader, batches: int, cold: bool = False) -> float:
    """Images/s over ``batches`` batches after the first (worker start-up is not per-image
    cost). ``cold``: the page cache dropped first (root only) and the first batch timed too,
    as its reads are the point: data that does not fit in memory is read from the disk."""
    if cold:
        drop_page_cache()
        start, n = time.perf_counter(), 0
    it = iter(loader)
    if not cold:
        next(it)
        start, n = time.perf_counter(), 0
    for _, (x, _) in zip(range(batches), it):
        n += len(x)
    return n / (time.perf_counter() - start)


def drop_page_cache() -> None:
    """Write back and drop the kernel's page cache (needs root)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError as e:
        raise SystemExit(f"--cold needs root to drop the page cache: {e}")


def throughput(opts: argparse.Namespace) -> None:
    import albumentations as A
    import torch
    from torch.utils.data import DataLoader

    from trainkit.data.augment import AUGMENTATIONS
    from trainkit.data.datamodule import DataModule

    torch.set_num_threads(1)
    folder = make_folder(Path(opts.dir) / "jpeg256", 2000, 256)
    print("| workers | trainkit images/s | hand Dataset images/s | ratio of medians | median of paired ratios |\n"
          "|---|---|---|---|---|")
    for w in opts.workers:
        dm = DataModule(dataset="image_folder", root=str(folder), dataset_args={"size": [224, 224]}, batch_size=64,
                        num_workers=w, persistent_workers=False, augment={"train": "imagenet"}, mean="imagenet",
                        val_fraction=0.1, test_fraction=0.1)
        dm.setup()
        ds = dm.splits["train"]
        files = [ds.source.index.path(int(i)) for i in ds.indices]
        hand = Hand(files, ds.labels.tolist(), A.Compose(AUGMENTATIONS.get("imagenet")(224, 224), seed=0))
        arms = {"trainkit": lambda: dm.train_dataloader(),
                "hand": lambda: DataLoader(hand, batch_size=64, shuffle=True, num_workers=w)}
        got: dict[str, list[float]] = {a: [] for a in arms}
        for r in range(opts.reps):  # the arms alternate within a rep, first one, then the other
            for a in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
                loader = arms[a]()
                if a == "trainkit":
                    loader.sampler.set_epoch(r)
                got[a].append(images_per_s(loader, opts.batches))
        t, h = statistics.median(got["trainkit"]), statistics.median(got["hand"])
        # this VM's speed drifts by +-20% between reps; a rep's two arms ran seconds apart
        paired = statistics.median(a / b for a, b in zip(got["trainkit"], got["hand"]))
        print(f"| {w} | {t:.0f} ({' '.join(f'{v:.0f}' for v in got['trainkit'])}) | "
              f"{h:.0f} ({' '.join(f'{v:.0f}' for v in got['hand'])}) | {t / h:.3f} | {paired:.3f} |")


def startup(opts: argparse.Namespace) -> None:
    folder = make_folder(Path(opts.dir) / f"tiny_{opts.files}", opts.files, 8, classes=10)
    cache = Path(opts.dir) / "cache"
    env = {**os.environ, "TRAINKIT_CACHE_DIR": str(cache)}
    subprocess.run(["rm", "-rf", str(cache)], check=True)
    probe = ("import time, sys, logging; t0 = time.perf_counter()\n"
             "from trainkit.data.scan import scan_folder\n"
             f"i = scan_folder(__import__('pathlib').Path({str(folder)!r}))\n"
             "print(time.perf_counter() - t0, len(i))")
    print("| start | scan s | time to first step s |\n|---|---|---|")
    for label in ("first (no cache)", "second (cached index)"):
        scan = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
        scan_s = float(scan.stdout.split()[0])
        if label.startswith("first"):
            subprocess.run(["rm", "-rf", str(cache)], check=True)  # the fit below scans afresh
        start = time.perf_counter()
        cmd = [EXE, "fit", "--config", str(ROOT / "recipes" / "image_folder_cnn.yaml"), f"--data.root={folder}",
               "--trainer.max_steps=1", "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false",
               "--data.dataset_args={size: [8, 8]}", "--data.stats_sample=256", f"--run.name=s{time.time_ns()}"]
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        print(f"| {label} | {scan_s:.2f} | {time.perf_counter() - start:.2f} (whole fit of 1 step) |")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["rss", "throughput", "startup"])
    p.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "trainkit-bench"))
    p.add_argument("--small", type=int, default=2000)
    p.add_argument("--large", type=int, default=20000)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--files", type=int, default=100_000)
    opts = p.parse_args()
    os.chdir(tempfile.mkdtemp())
    {"rss": rss, "throughput": throughput, "startup": startup}[opts.what](opts)


if __name__ == "__main__":
    main()
