"""The training step reads no tensor value on the host (tests/host_reads.py counts them).

Each case is a real fit of the default recipe with its settings (W&B offline on, the recipe's 2
DataLoader workers, progress bar on), 2 epochs of 20 steps: 35 ordinary steps besides the 4
logging steps and monitor step 0, which are allowed their batched transfers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
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


def torchrun(run_id: str, *args: str) -> subprocess.CompletedProcess:
    """The default recipe on 2 gloo processes under launch/torchrun.sh (tests/ importable)."""
    tests = Path(__file__).parent
    env = {**os.environ, "PYTHON": sys.executable, "MASTER_PORT": str(free_port()), "NPROC": "2",
           "RUN_ID": run_id, "PYTHONPATH": str(tests)}
    proc = subprocess.run(
        ["bash", str(tests.parent / "launch" / "torchrun.sh"), str(DEFAULT_RECIPE), "--trainer.accelerator=cpu",
         "--data.batch_size=32", *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


def callback(class_path: str, **init_args: object) -> str:
    return f"--trainer.callbacks+={json.dumps({'class_path': class_path, 'init_args': init_args})}"


@pytest.mark.slow
def test_ordinary_ddp_steps_read_nothing_on_the_host_on_either_rank(tmp_path):
    torchrun("reads", "--trainer.max_epochs=2", callback("host_reads.HostReads", out=str(tmp_path / "reads")))
    for rank in (0, 1):
        summary = json.loads((tmp_path / f"reads.rank{rank}").read_text())
        assert len(summary["ordinary_steps"]) >= 30 and summary["ordinary_reads"] == {}, report(summary)


@pytest.mark.slow
def test_sigterm_on_one_ddp_rank_stops_both_at_the_same_step_and_last_ckpt_resumes(tmp_path):
    # rank 1 alone gets SIGTERM after step 5; Lightning's per-step broadcast is off (issue 21487)
    out = str(tmp_path / "stopped")
    torchrun("term", "--trainer.max_epochs=3", callback("planted.SignalAt", step=5, rank=1, out=out))
    stopped = [int(Path(f"{out}.rank{r}").read_text()) for r in (0, 1)]
    run = Path("runs/digits_mlp/torchrun-term")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    # the vote is read one step after the signal: both ranks stop together, right after it
    assert stopped[0] == stopped[1] == ckpt["global_step"] in (6, 7), stopped
    assert not (run / "metrics.json").exists(), "stopped, not finished"
    resumed = torchrun("term", "--trainer.max_epochs=3")  # the same run dir: resume: auto
    assert "resuming from runs/digits_mlp/torchrun-term/checkpoints/last.ckpt" in resumed.stdout + resumed.stderr
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3 * 20
    assert json.loads((run / "metrics.json").read_text())["val/acc"] > 0.5
