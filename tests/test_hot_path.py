"""The training step reads no tensor value on the host (tests/host_reads.py counts them).

Each case is a real fit of the default recipe with its settings (W&B offline on, the recipe's 2
DataLoader workers, progress bar on), 2 epochs of 20 steps: 35 ordinary steps besides the 4
logging steps and monitor step 0, which are allowed their batched transfers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DEFAULT_RECIPE
from host_reads import count_fit, report
from test_metrics import free_port

BASE = ["fit", "--config", str(DEFAULT_RECIPE), "--trainer.max_epochs=2"]
CASES = {
    "default": [],
    "ema": ["--model.ema={decay: 0.99}"],
    "swa": ["--model.swa={start_epoch: 0}", "--model.norm=batch"],
    # the in-memory fast path with its batched augmentation, and mixup/cutmix on the device
    "memory_augment_mix": ["--data.loader=memory", "--data.augment={train: cifar}",
                           "--data.mix={mixup_alpha: 0.2, cutmix_alpha: 1.0, prob: 1.0}"],
}


def check(summary: dict) -> None:
    assert len(summary["ordinary_steps"]) >= 30, summary["steps"]  # the test saw real ordinary steps
    assert summary["ordinary_reads"] == {}, report(summary)
    # logging steps: the logged values in one transfer (the module's), plus the NaN guard's check
    for step in (9, 19, 29, 39):
        assert summary["reads_by_step"].get(str(step)) == {"tolist": 2}, summary["reads_by_step"]


@pytest.mark.parametrize("case", list(CASES))
def test_ordinary_training_steps_read_nothing_on_the_host(case, tmp_path):
    check(count_fit([*BASE, f"--run.name={case}", *CASES[case]], tmp_path / "reads"))


def test_ordinary_ddp_steps_read_nothing_on_the_host_on_either_rank(tmp_path):
    spec = json.dumps({"class_path": "host_reads.HostReads", "init_args": {"out": str(tmp_path / "reads")}})
    tests = Path(__file__).parent
    env = {**__import__("os").environ, "PYTHON": sys.executable, "MASTER_PORT": str(free_port()), "NPROC": "2",
           "RUN_ID": "reads", "PYTHONPATH": str(tests)}
    proc = subprocess.run(
        ["bash", str(tests.parent / "launch" / "torchrun.sh"), str(DEFAULT_RECIPE), "--trainer.accelerator=cpu",
         "--trainer.max_epochs=4", "--data.batch_size=32", f"--trainer.callbacks+={spec}"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    for rank in (0, 1):
        summary = json.loads((tmp_path / f"reads.rank{rank}").read_text())
        assert len(summary["ordinary_steps"]) >= 30 and summary["ordinary_reads"] == {}, report(summary)
