"""The run-dir lock: one job per run dir; a second one exits 2 naming the holder and writes
nothing; stale locks of dead processes and earlier starts of the same job are taken over."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import DEFAULT_RECIPE
from wandb_records import read_run

from trainkit.errors import ConfigError
from trainkit.runlock import LOCK_NAME, RunLock

EXE = str(Path(sys.executable).with_name("trainkit"))
HOLD = """
import sys, time
from trainkit.runlock import RunLock
lock = RunLock(sys.argv[1])
try:
    lock.acquire()
except Exception as e:
    print("refused:", e, flush=True)
    sys.exit(2)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
lock.release()
"""


def hold(run_dir: Path, seconds: float, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Another process that takes the lock of ``run_dir`` and keeps it ``seconds``."""
    return subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), str(seconds)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})})


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.05)


def test_a_live_holder_refuses_a_second_job_and_its_death_frees_the_lock(tmp_path, caplog):
    run = tmp_path / "runs" / "e" / "r"
    other = hold(run, 600)
    try:
        wait_for(run / LOCK_NAME, other)
        with pytest.raises(ConfigError) as refused:
            RunLock(run).acquire()
        message = str(refused.value)
        assert f"pid {other.pid} on host {socket.gethostname()}" in message and "since" in message
        assert message.startswith("run.name:") and str(run / LOCK_NAME) in message
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
    # the holder died without releasing: its lock is stale and taken over with a message
    assert (run / LOCK_NAME).exists()
    with caplog.at_level("WARNING"), RunLock(run) as lock:
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid() and lock.held
    assert f"pid {other.pid}" in caplog.text and "no longer runs" in caplog.text
    assert not (run / LOCK_NAME).exists(), "released on exit"


def test_an_earlier_start_of_the_same_job_on_another_host_is_taken_over(tmp_path, monkeypatch):
    run = tmp_path / "r"
    run.mkdir()
    stale = {"pid": 1, "host": "node-that-died", "job": "SLURM job 77", "since": "yesterday", "start": None}
    (run / LOCK_NAME).write_text(json.dumps(stale))
    monkeypatch.setenv("SLURM_JOB_ID", "78")
    with pytest.raises(ConfigError, match="SLURM job 77"):
        RunLock(run).acquire()  # another job's lock on another host: it may still run
    monkeypatch.setenv("SLURM_JOB_ID", "77")  # the requeued job itself
    with RunLock(run):
        assert json.loads((run / LOCK_NAME).read_text())["job"] == "SLURM job 77"


def test_jobs_that_start_together_get_the_lock_once(tmp_path):
    run = tmp_path / "r"
    procs = [hold(run, 3) for _ in range(4)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert sum(o.startswith("held") for o in outs) == 1, outs
    assert sum("refused:" in o for o in outs) == 3 and [p.returncode for p in procs].count(2) == 3, outs


def test_refused_input_and_a_refused_lock_leave_no_run_dir(tmp_path):
    (tmp_path / "afile").write_text("x")
    for root, words in ((tmp_path / "afile" / "runs", "Not a directory"), (Path("/proc/runs"), "run.root")):
        with pytest.raises(ConfigError) as e:
            RunLock(root / "e" / "r").acquire()
        assert "run.root" in str(e.value) and words in str(e.value)
    assert not Path("/proc/runs").exists()


def lr_of(ckpt: Path) -> float:
    return torch.load(ckpt, weights_only=True)["hyper_parameters"]["optimizer"]["lr"]


def test_a_fit_on_a_locked_run_exits_2_and_writes_nothing(capsys):
    from conftest import QUIET, tree_digest

    from trainkit.cli import main

    run = Path("runs/digits_mlp/busy")
    argv = ["fit", "--config", str(DEFAULT_RECIPE), "--run.name=busy", "--trainer.max_epochs=1", *QUIET]
    other = hold(run, 600)
    try:
        wait_for(run / LOCK_NAME, other)
        before = tree_digest(run)
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"in use by another job: pid {other.pid}" in err and "Traceback" not in err
        assert tree_digest(run) == before and list(before) == [LOCK_NAME], "nothing written, the lock kept"
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()


@pytest.mark.slow  # two real fits side by side (~20 s on a quiet 2-core machine)
def test_two_fits_with_the_same_run_name_one_exits_2_and_the_other_is_intact():
    # the recipe's defaults (W&B offline, 2 workers), two learning rates, one run name
    base = [EXE, "fit", "--config", str(DEFAULT_RECIPE), "--run.name=same", "--trainer.enable_progress_bar=false"]
    first = subprocess.Popen([*base, "--model.optimizer.lr=0.1", "--trainer.max_epochs=50"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = Path("runs/digits_mlp/same")
    try:
        wait_for(run / "checkpoints" / "last.ckpt", first, timeout=240)  # training, lock held
        second = subprocess.run([*base, "--model.optimizer.lr=0.003", "--trainer.max_epochs=1"],
                                capture_output=True, text=True, timeout=240)
        assert first.poll() is None, "the first fit still ran while the second was refused"
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"is in use by another job: pid {first.pid} on host {socket.gethostname()}" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGUSR1)  # checkpoint and stop (no SLURM here): a short test
        out, _ = first.communicate(timeout=240)
    assert first.returncode == 0, out[-3000:]
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["optimizer"]["lr"] == 0.1
    ckpts = sorted((run / "checkpoints").glob("*.ckpt"))
    assert ckpts and all(lr_of(c) == 0.1 for c in ckpts), ckpts
    records = read_run(run)
    assert len(records["ids"]) == 1 and len(records["files"]) == 1, "one W&B run, the first fit's"
    assert records["config"]["model"]["optimizer"]["lr"] == 0.1
    # one CSV history, the first fit's: its rows end at the step of its last checkpoint
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert max(int(r["step"]) for r in rows) <= torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"]
    assert not (run / "csv").exists(), "no logger of the second fit"
    assert not (run / LOCK_NAME).exists()
