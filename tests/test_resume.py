"""Faults cost at most the work since the last checkpoint: exact resume after SIGKILL (at an
epoch end and mid-epoch), checkpoints that survive kills during writing, corrupt checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import DEFAULT_RECIPE, QUIET

EXE = str(Path(sys.executable).with_name("trainkit"))
EXACT = ["--model.dropout=0.2", "--trainer.deterministic=true", "--data.num_workers=0", "--trainer.logger=false",
         "--trainer.max_epochs=4", *QUIET]


def fit(name: str, *extra: str) -> list[str]:
    return [EXE, "fit", "--config", str(DEFAULT_RECIPE), f"--run.name={name}", *EXACT, *extra]


def load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def kill_when(cmd: list[str], ckpt: Path, ready, timeout: float = 120) -> None:
    """Start ``cmd`` and SIGKILL it once ``ready(checkpoint)`` holds."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if ckpt.exists() and ready(load(ckpt)):
                    break
            except Exception:  # noqa: BLE001  (a checkpoint still being renamed into place)
                pass
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = load(a)["state_dict"], load(b)["state_dict"]
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), f"{key} differs"


@pytest.mark.parametrize("mid_epoch", [False, True], ids=["after-epoch", "mid-epoch"])
@pytest.mark.slow  # over 10 s: CI's slow pass (the default suite's budget)
def test_killed_and_resumed_run_ends_bitwise_equal_to_an_uninterrupted_one(mid_epoch):
    extra = ["--checkpoint.every_n_steps=7"] if mid_epoch else []
    full = subprocess.run(fit("full", *extra), capture_output=True, text=True)
    assert full.returncode == 0, full.stderr[-3000:]

    cut = Path("runs/digits_mlp/cut/checkpoints/last.ckpt")
    steps_per_epoch = load(Path("runs/digits_mlp/full/checkpoints/last.ckpt"))["global_step"] // 4
    if mid_epoch:  # a step checkpoint inside epoch 1
        ready = lambda c: c["global_step"] > steps_per_epoch and c["global_step"] % steps_per_epoch  # noqa: E731
    else:
        ready = lambda c: c["epoch"] >= 1  # noqa: E731
    kill_when(fit("cut", *extra), cut, ready)
    state = load(cut)
    assert state["global_step"] < 4 * steps_per_epoch, "killed before the end"
    if mid_epoch:
        assert state["global_step"] % steps_per_epoch, "the kill left a mid-epoch checkpoint"

    resumed = subprocess.run(fit("cut", *extra), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from runs/digits_mlp/cut/checkpoints/last.ckpt" in resumed.stderr + resumed.stdout
    assert load(cut)["global_step"] == 4 * steps_per_epoch
    assert_same_weights(Path("runs/digits_mlp/full/checkpoints/last.ckpt"), cut)


@pytest.mark.slow
def test_kill_minus_9_while_checkpointing_never_leaves_an_unloadable_checkpoint():
    from trainkit.checkpoints import first_loadable

    rng = __import__("random").Random(0)
    cmd = fit("hammer", "--checkpoint.every_n_steps=1", "--trainer.max_epochs=50")  # a write every step
    ckpts = Path("runs/digits_mlp/hammer/checkpoints")
    steps = []
    for _ in range(4):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        start = steps[-1] if steps else 0
        while time.monotonic() < deadline:  # wait for this attempt's own writes to begin
            try:
                if load(ckpts / "last.ckpt")["global_step"] > start + 2:
                    break
            except Exception:  # noqa: BLE001  (between the rename to previous.ckpt and the new write)
                pass
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.5))  # somewhere inside the stream of checkpoint writes
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        found = first_loadable([ckpts / "last.ckpt", ckpts / "previous.ckpt"], "run.resume")
        assert found is not None, "a checkpoint survives the kill"
        steps.append(found[1]["global_step"])
    assert steps == sorted(steps) and steps[-1] > steps[0], f"each attempt resumed and went on: {steps}"


@pytest.mark.slow
def test_torchrun_restarts_a_killed_worker_and_the_run_finishes():
    from test_distributed import TORCHRUN
    from test_metrics import free_port

    env = {**os.environ, "PYTHON": sys.executable, "NPROC": "2", "MAX_RESTARTS": "1", "RUN_ID": "restart",
           "MASTER_PORT": str(free_port())}
    args = ["--data.num_workers=0", "--trainer.accelerator=cpu", "--trainer.logger=false", "--trainer.max_epochs=6", *QUIET]
    proc = subprocess.Popen(["bash", str(TORCHRUN), str(DEFAULT_RECIPE), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = Path("runs/digits_mlp/torchrun-restart/checkpoints/last.ckpt")
    deadline = time.monotonic() + 180
    while not (last.exists() and proc.poll() is None):
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()[0][-3000:]
        time.sleep(0.1)
    victim = next(
        pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
        if _environ(pid).get("TORCHELASTIC_RUN_ID") == "restart" and _environ(pid).get("LOCAL_RANK") == "1"
        and b"trainkit" in Path(f"/proc/{pid}/cmdline").read_bytes()
    )
    os.kill(victim, signal.SIGKILL)  # mid-epoch, one of the two workers
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-4000:]
    assert "resuming from" in out, "the restarted workers resumed"
    final = load(last)
    assert final["epoch"] == 5 and final["global_step"] == 6 * 10, "all epochs, every step once"  # 630 / 64


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def test_a_moved_run_dir_resumes_into_its_own_best_checkpoint_and_test_agrees(isolated, capsys):
    import json
    import shutil

    from trainkit.cli import main

    quick = ["--config", str(DEFAULT_RECIPE), "--run.name=m", "--trainer.logger=false", "--data.num_workers=0",
             "--trainer.limit_train_batches=4", *QUIET]
    assert main(["fit", *quick, "--trainer.max_epochs=2"]) == 0
    shutil.move("runs", "moved")  # the original place is gone: nothing may point there
    assert main(["fit", *quick, "--run.root=moved", "--trainer.max_epochs=4"]) == 0
    run = Path("moved/digits_mlp/m")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt", "previous.ckpt"]
    assert json.loads((run / "metrics.json").read_text())["fit/best_checkpoint"] == "best.ckpt"
    for ckpt in (run / "checkpoints").iterdir():
        state = load(ckpt)
        best = next(v for k, v in state["callbacks"].items() if k.startswith("ModelCheckpoint"))
        assert best["dirpath"] == "." and best["best_model_path"] == "best.ckpt", best
        assert str(isolated) not in repr(state), f"an absolute path inside {ckpt.name}"
    capsys.readouterr()
    assert main(["test", "--config", str(DEFAULT_RECIPE), "--run.root=moved", "--run.name=m", "--data.num_workers=0",
                 "--trainer.logger=false", *QUIET]) == 0
    assert f"test/checkpoint: {run / 'checkpoints' / 'best.ckpt'}" in capsys.readouterr().out


class Ticks:
    """A clock that advances one second per reading: every training batch takes one second."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


def test_throughput_after_a_mid_epoch_resume_counts_steady_batches_only(tmp_path):
    from lightning.pytorch import Trainer

    from trainkit.callbacks.checkpointing import LastCheckpoint
    from trainkit.callbacks.throughput import Throughput
    from trainkit.data.datamodule import DataModule
    from trainkit.module import Classifier

    def fit(epochs: int, ckpt: Path | None) -> Throughput:
        meter = Throughput(clock=Ticks())
        trainer = Trainer(max_epochs=epochs, limit_train_batches=8, limit_val_batches=2, logger=False,
                          enable_progress_bar=False, enable_model_summary=False,
                          default_root_dir=tmp_path, callbacks=[LastCheckpoint(tmp_path / "last.ckpt", every_n_steps=3), meter])
        trainer.fit(Classifier(), datamodule=DataModule(num_workers=0), ckpt_path=ckpt, weights_only=True)
        return meter

    first = fit(1, None)  # steps 3 and 6 mid-epoch, 8 at the epoch end: previous.ckpt is step 6
    assert first.samples_per_s() == 64.0, first.segments  # 7 batches of 64 after the first, 1 s each
    assert load(tmp_path / "previous.ckpt")["global_step"] == 6
    resumed = fit(2, tmp_path / "previous.ckpt")
    # Lightning calls no on_train_epoch_start for the resumed epoch; its 2 batches are warm-up
    assert [(e, n) for e, n, _ in resumed.segments] == [(0, 64), (1, 7 * 64)]
    assert resumed.samples_per_s() == 64.0
