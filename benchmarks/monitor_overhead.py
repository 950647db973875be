"""Overhead of the diag/ monitors: the default recipe with monitors off vs on (default interval).

    PYTHONPATH=$PWD python benchmarks/monitor_overhead.py [--reps 5] [--epochs 5]

Each repetition runs `trainkit fit` in-process twice (off, on; the order alternates so machine
drift hits both), W&B off (both arms would pay it alike), NaN guard on in both, and times the
whole `fit` call. Prints per-run seconds, the medians and their ratio (on / off).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one(monitors: bool, epochs: int, name: str) -> float:
    from trainkit.cli import main

    args = ["fit", "--config", str(ROOT / "recipes" / "digits_mlp.yaml"), f"--trainer.max_epochs={epochs}",
            "--data.num_workers=0", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--trainer.logger=false", f"--diagnostics.monitors={str(monitors).lower()}", f"--run.name={name}"]
    start = time.perf_counter()
    assert main(args) == 0
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--epochs", type=int, default=5)
    opts = p.parse_args()
    os.chdir(tempfile.mkdtemp())
    one(True, 1, "warmup")
    times: dict[bool, list[float]] = {False: [], True: []}
    for rep in range(opts.reps):
        for monitors in ((False, True) if rep % 2 == 0 else (True, False)):
            times[monitors].append(one(monitors, opts.epochs, f"r{rep}-{monitors}"))
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print("off:", " ".join(f"{t:.2f}" for t in times[False]))
    print("on: ", " ".join(f"{t:.2f}" for t in times[True]))
    print(f"median off {off:.2f} s, on {on:.2f} s, ratio {on / off:.3f}")


if __name__ == "__main__":
    main()
