"""Start-up cost: ``trainkit --help`` wall time and time to the first training step.

    PYTHONPATH=$PWD python benchmarks/startup.py [--reps 5]

Each measurement is a fresh process (imports included, as a user pays them). The first step
is timed from process start to the end of the first training batch of the default recipe
(recipes/digits_mlp.yaml, its own settings: num_workers 2, W&B offline), reported by a callback
that prints the time and exits. Prints a markdown table of medians and the goals.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAINKIT = Path(sys.executable).with_name("trainkit")

FIRST_STEP = """
import os, sys, time
t0 = float(sys.argv[1])
from lightning.pytorch.callbacks import Callback
class FirstStep(Callback):
    def on_train_batch_end(self, trainer, *a):
        print(f"FIRST_STEP {time.time() - t0:.3f}", flush=True)
        os._exit(0)
from trainkit.runner import TrainkitCLI
TrainkitCLI(["fit", "--config", sys.argv[2], "--trainer.callbacks+=__main__.FirstStep",
             "--trainer.enable_progress_bar=false", "--run.name=first-step"])
"""


def help_time() -> float:
    start = time.perf_counter()
    subprocess.run([str(TRAINKIT), "--help"], check=True, capture_output=True)
    return time.perf_counter() - start


def first_step_time(cwd: str) -> float:
    out = subprocess.run([sys.executable, "-c", FIRST_STEP, repr(time.time()), str(ROOT / "recipes" / "digits_mlp.yaml")],
                         cwd=cwd, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "offline"})
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("FIRST_STEP")]
    if not lines:
        raise SystemExit(f"no first step:\n{out.stderr[-3000:]}")
    return float(lines[0].split()[1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--reps", type=int, default=5)
    opts = p.parse_args()
    cwd = tempfile.mkdtemp()
    helps = [help_time() for _ in range(opts.reps)]
    firsts = [first_step_time(cwd) for _ in range(opts.reps)]
    print("| measure | runs (s) | median (s) | goal |")
    print("|---|---|---|---|")
    print(f"| `trainkit --help` | {' '.join(f'{t:.2f}' for t in helps)} | {statistics.median(helps):.2f} | < 1 s |")
    print(f"| first training step, default recipe | {' '.join(f'{t:.2f}' for t in firsts)} | {statistics.median(firsts):.2f} | < 10 s |")


if __name__ == "__main__":
    main()
