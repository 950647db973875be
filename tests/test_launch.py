"""Launchers that work from any install (issue 20 items 7-11, issue 17 item 5): the sbatch
script and torchrun.sh find the interpreter of their trainkit without PATH, the SLURM
request fits the partition's nodes, and `--key value` overrides are accepted."""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DEFAULT_RECIPE, ROOT

from trainkit.cli import main
from trainkit.errors import ConfigError
from trainkit.launching import Nodes, job_resources, parse_sinfo

BARE_PATH = "/usr/bin:/bin"  # no virtual environment on it, so no `trainkit`


def dry_run_line(*env: str) -> list[str]:
    out = subprocess.run(["env", f"PATH={BARE_PATH}", "DRY_RUN=1", *env, "bash", str(ROOT / "launch" / "torchrun.sh"),
                          "r.yaml"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return shlex.split(out.stdout)


def test_torchrun_sh_finds_the_install_it_ships_with(tmp_path):
    if Path(sys.executable).parent.parent != ROOT / ".venv":
        pytest.skip("the checkout's interpreter is not its .venv (make bootstrap makes one)")
    line = dry_run_line()
    assert line[line.index("torch.distributed.run") - 2] == str(ROOT / ".venv" / "bin" / "python")
    # installed into a virtual environment's site-packages: that environment's bin/python
    site = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
    shutil.copytree(ROOT / "trainkit", site / "trainkit", ignore=shutil.ignore_patterns("__pycache__"))
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir()
    # its interpreter: this one with that site-packages first on the path, as a venv's would have it
    python.write_text(f"#!/bin/sh\nPYTHONPATH={site} exec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    out = subprocess.run(["env", f"PATH={BARE_PATH}", "DRY_RUN=1", "bash", str(site / "trainkit/templates/torchrun.sh"),
                          "r.yaml"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert shlex.split(out.stdout)[4] == str(python)
    # an explicit PYTHON wins; none that imports this trainkit: exit 2 with what to set
    assert dry_run_line("PYTHON=/opt/py/bin/python3")[4] == "/opt/py/bin/python3"
    (site / "trainkit" / "__init__.py").unlink()
    python.unlink()
    out = subprocess.run(["env", f"PATH={BARE_PATH}", "DRY_RUN=1", "bash", str(site / "trainkit/templates/torchrun.sh"),
                          "r.yaml"], capture_output=True, text=True)
    assert out.returncode == 2 and "set PYTHON=" in out.stderr


def test_rendered_sbatch_runs_trainkit_through_the_launching_interpreter(capsys, tmp_path):
    assert main(["launch", "--config", str(DEFAULT_RECIPE), "--slurm", "--dry-run", "--cpus-per-task", "2"]) == 0
    script = capsys.readouterr().out.split("\n", 1)[1]
    assert "#SBATCH --cpus-per-task=2" in script.splitlines()
    assert "export TORCH_NCCL_ASYNC_ERROR_HANDLING=" in script and 'OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK' in script
    # what srun is given, with a PATH that has no trainkit on it (sbatch passes the caller's PATH)
    head, srun = script.split("srun --kill-on-bad-exit=1 ")
    probe = tmp_path / "probe.sh"
    probe.write_text(head + 'printf "%s\\n" "${RUN[@]}" "$OMP_NUM_THREADS"\n')
    got = subprocess.run(["env", "-u", "OMP_NUM_THREADS", f"PATH={BARE_PATH}", "SLURM_CPUS_PER_TASK=2", "bash", str(probe)],
                         capture_output=True, text=True)
    assert got.stdout.splitlines() == [sys.executable, "-m", "trainkit", "2"], got.stderr
    # the task starts with SIGUSR1 held until trainkit's handler is in (tests/test_slurm.py)
    assert srun.startswith('"${HOLD_USR1[@]}" "${RUN[@]}" fit --config "$RECIPE"')


def test_key_value_overrides_are_accepted_as_lightningcli_takes_them(capsys):
    args = ["launch", "--config", str(DEFAULT_RECIPE), "--dry-run", "--model.optimizer.lr", "0.05", "--run.root", "elsewhere",
            "--trainer.max_epochs=2"]
    assert main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert "lr 0.05 (recipe lr, no scaling)" in out[0]
    assert shlex.split(out[-1])[-3:] == ["--model.optimizer.lr=0.05", "--run.root=elsewhere", "--trainer.max_epochs=2"]
    assert main(["sweep", "--config", str(DEFAULT_RECIPE), "--space", "nope.yaml", "--run.root", "R"]) == 2
    assert "nope.yaml" in capsys.readouterr().err, "the override was taken; the missing space is what stops it"


def namespace(cpus=None, gpus=None) -> argparse.Namespace:
    return argparse.Namespace(cpus_per_task=cpus, gpus_per_node=gpus)


def test_cpus_and_gpus_per_task_follow_the_partitions_nodes():
    text = "debug* 2 (null)\ngpu 64 gpu:a100:8(S:0-1)\ngpu 48+ gpu:h100:8,gpu:a100:0\n"
    assert parse_sinfo(text, None) == Nodes("debug", 2, 0)
    gpu = parse_sinfo(text, "gpu")
    assert gpu == Nodes("gpu", 48, 8)
    assert parse_sinfo(text, "nosuch") is None and parse_sinfo("", None) is None
    # defaults: the node's CPUs shared by its tasks, one GPU per task where the nodes have GPUs
    assert job_resources(namespace(), 2, Nodes("debug", 2, 0)) == {"cpus-per-task": "1"}
    assert job_resources(namespace(), 8, gpu) == {"cpus-per-task": "6", "gpus-per-node": "8"}
    assert job_resources(namespace(), 1, None) == {}, "unknown nodes: SLURM's own defaults"
    # the case of issue 20: 4 CPUs x 2 tasks on a 2-CPU node stays pending forever
    with pytest.raises(ConfigError, match=r"--cpus-per-task 4 x 2 tasks per node = 8 CPUs, but nodes of partition debug have 2 CPUs"):
        job_resources(namespace(cpus=4), 2, Nodes("debug", 2, 0))
    with pytest.raises(ConfigError, match=r"--gpus-per-node 8, but nodes of partition debug have 2 CPUs and 0 GPUs"):
        job_resources(namespace(gpus=8), 1, Nodes("debug", 2, 0))
    with pytest.raises(ConfigError, match=r"--devices 4 tasks per node"):
        job_resources(namespace(), 4, Nodes("debug", 2, 0))
