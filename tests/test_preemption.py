"""SIGUSR1 at any moment of a fit, outside SLURM (the SLURM cluster tests are in test_slurm.py):
before training it stops at the first batch with a checkpoint and W&B flushed, and the same
command resumes to the end with one W&B run and no gap; after training it lets the run finish.
Real signals to this process, real training, W&B offline read back."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import DEFAULT_RECIPE, QUIET
from wandb_records import read_run

from trainkit.cli import main
from trainkit.preemption import PREEMPTION

# the recipe's defaults (W&B offline, 2 workers), shrunk to 5 steps per epoch
FIT = ["fit", "--config", str(DEFAULT_RECIPE), "--run.name=p", "--trainer.limit_train_batches=5",
       "--trainer.log_every_n_steps=1", "--trainer.max_epochs=2", *QUIET]

SIGNALS = """
import os, signal
from lightning.pytorch import Callback


class SignalAtTrainEnd(Callback):
    \"\"\"Sends this process SIGUSR1 when training has ended: during the fit's last steps.\"\"\"

    def on_train_end(self, trainer, pl_module):
        os.kill(os.getpid(), signal.SIGUSR1)


class SignalAtBatch(Callback):
    \"\"\"Sends this process SIGUSR1 at the end of training batch ``batch`` of epoch 0.\"\"\"

    def __init__(self, batch: int = 0):
        self.batch = batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 0 and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGUSR1)
"""


def history(run: Path) -> tuple[list[int], list[int]]:
    records = read_run(run)
    assert len(records["ids"]) == 1, records["ids"]
    rows = records["history"]
    return (sorted(r["epoch"] for r in rows if "val/acc" in r),
            sorted(r["trainer/global_step"] for r in rows if "train/loss_step" in r))


def test_a_signal_before_training_stops_at_the_first_batch_and_the_rerun_resumes_without_gap(caplog):
    PREEMPTION.install()
    os.kill(os.getpid(), signal.SIGUSR1)  # delivered now: before parsing, as during a job's start-up
    assert PREEMPTION.received
    with caplog.at_level("INFO"):
        assert main(FIT) == 0
    log = caplog.text
    assert "SIGUSR1 received: checkpoint saved to" in log and "at epoch 0, global step 1;" in log, log
    assert "not a SLURM job, nothing to requeue" in log and "signal 10" not in log
    run = Path("runs/digits_mlp/p")
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 1
    assert not PREEMPTION.received, "the signal belonged to that run"
    assert history(run) == ([], [0]), "flushed before stopping: the one step it trained"

    caplog.clear()
    with caplog.at_level("INFO"):
        assert main(FIT) == 0
    assert "training continues at epoch 0 after 1 of its batches (global step 1)" in caplog.text
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 10
    assert json.loads((run / "metrics.json").read_text())["fit/epochs"] == 2
    # every epoch's validation and every step once across both runs (fit's check of best.ckpt is
    # logged as best/val/*, not as one more val point)
    assert history(run) == ([0, 1], list(range(10)))


def test_a_signal_at_an_epochs_last_batch_stops_after_that_epoch_is_validated(caplog):
    # a checkpoint of an epoch's last batch would resume past the epoch's validation: stop after it
    Path("signals.py").write_text(SIGNALS)  # imported from the current directory, as python -m would
    callbacks = "--trainer.callbacks=[{class_path: signals.SignalAtBatch, init_args: {batch: 4}}]"
    with caplog.at_level("INFO"):
        assert main([*FIT, callbacks]) == 0
    assert "checkpoint saved to runs/digits_mlp/p/checkpoints/last.ckpt at epoch 0, global step 5;" in caplog.text
    run = Path("runs/digits_mlp/p")
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 5
    assert history(run) == ([0], list(range(5))), "epoch 0 validated before stopping"
    caplog.clear()
    with caplog.at_level("INFO"):
        assert main(FIT) == 0
    assert "training continues at the start of epoch 1 (global step 5; epoch 0 is done)" in caplog.text
    assert history(run) == ([0, 1], list(range(10)))


def test_a_signal_after_training_lets_the_fit_finish(caplog):
    Path("signals.py").write_text(SIGNALS)
    callbacks = "--trainer.callbacks=[{class_path: signals.SignalAtTrainEnd}]"
    with caplog.at_level("INFO"):
        assert main([*FIT, callbacks, "--trainer.logger=false"]) == 0
    assert "SIGUSR1 arrived after training ended: finishing the last steps" in caplog.text
    run = Path("runs/digits_mlp/p")
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["fit/epochs"] == 2 and "val/acc" in metrics, "the final validation ran"
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 10


@pytest.mark.slow  # over 10 s: CI's slow pass (the default suite's budget)
def test_a_signal_while_the_interpreter_starts_is_held_until_the_handler_takes_it():
    # as slurm.sbatch starts each task: SIGUSR1 blocked until trainkit installs its handler
    import subprocess
    import sys

    exe = str(Path(sys.executable).with_name("trainkit"))
    proc = subprocess.Popen(["env", "--block-signal=USR1", exe, *FIT, "--trainer.logger=false", "--data.num_workers=0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    bit = 1 << (signal.SIGUSR1 - 1)
    while True:  # env has blocked the signal and exec'd Python, whose handler is not in yet
        status = dict(line.split(":\t", 1) for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines())
        if int(status["SigBlk"], 16) & bit:
            assert not int(status["SigCgt"], 16) & bit, "too late: the handler is already installed"
            break
    proc.send_signal(signal.SIGUSR1)  # without the mask this kills the starting process (exit 138)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert "SIGUSR1 received: checkpoint saved to" in out and "at epoch 0, global step 1;" in out, out[-3000:]
