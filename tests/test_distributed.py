"""Real multi-process training on the CPU: torchrun with 2 gloo workers, and two torchrun
"nodes" on the loopback address; plus the launch plan and rendering of `trainkit launch`."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DEFAULT_RECIPE, QUIET, trainkit
from test_metrics import free_port

from trainkit.cli import main

TORCHRUN = Path(__file__).parents[1] / "launch" / "torchrun.sh"
COMMON = ["--data.num_workers=0", "--trainer.accelerator=cpu", *QUIET]


def torchrun(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.Popen:
    full = {**os.environ, "PYTHON": sys.executable, "MASTER_PORT": str(env.pop("MASTER_PORT", free_port())), **env}
    return subprocess.Popen(
        ["bash", str(TORCHRUN), str(DEFAULT_RECIPE), *COMMON, *args],
        env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def net_weights(ckpt: Path) -> dict[str, torch.Tensor]:
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("net.")}


@pytest.mark.slow  # over 10 s: CI's slow pass (the default suite's budget)
def test_torchrun_two_workers_match_one_process_with_the_same_global_batch():
    # 19 full steps per epoch: with the padded last batch the two worlds would see different samples.
    # In float64: the two worlds add the same gradient terms in another order (two half-batch sums
    # all-reduced vs one sum of 64), and how that rounds depends on the CPU's kernels. In float32
    # (unit roundoff u = 6e-8) the weights were seen to drift 4.8e-5 apart after 38 steps on one
    # CPU, an amplification of ~1e3 u by the training dynamics; the same dynamics in float64
    # (u = 1.1e-16) give ~1e-13 (9.6e-16 measured here). atol 1e-9 leaves four orders of margin, while a real
    # fault (gradients summed instead of averaged, another shard or order of samples) moves the
    # weights by ~lr * |g| > 1e-4.
    steps = ["--trainer.max_epochs=2", "--trainer.limit_train_batches=19", "--trainer.precision=64-true"]
    out = finish(torchrun({"NPROC": "2", "RUN_ID": "ddp"}, "--data.batch_size=32", *steps))
    assert out.count("run dir: runs/digits_mlp/torchrun-ddp") == 1, "rank zero alone reports"
    single = trainkit("fit", "--config", str(DEFAULT_RECIPE), "--run.name=single", "--data.batch_size=64", *COMMON, *steps)
    assert single.returncode == 0, single.stderr[-3000:]

    ddp_dir, single_dir = Path("runs/digits_mlp/torchrun-ddp"), Path("runs/digits_mlp/single")
    ddp_ckpt = torch.load(ddp_dir / "checkpoints/last.ckpt", weights_only=True)
    assert ddp_ckpt["trainkit_world"] == {
        "world_size": 2, "num_nodes": 1, "accumulate_grad_batches": 1, "batch_size": 32, "global_batch": 64,
    }
    a, b = net_weights(ddp_dir / "checkpoints/last.ckpt"), net_weights(single_dir / "checkpoints/last.ckpt")
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == torch.float64
        torch.testing.assert_close(a[key], b[key], atol=1e-9, rtol=0, msg=key)
    assert ddp_ckpt["global_step"] == 2 * 19
    # and training really happened: accuracy well above chance in both
    for run in (ddp_dir, single_dir):
        assert json.loads((run / "metrics.json").read_text())["val/acc"] > 0.5  # chance is 0.1; 20 steps


@pytest.mark.slow  # over 10 s: CI's slow pass (the default suite's budget)
def test_two_torchrun_nodes_on_loopback_train_together():
    port = free_port()
    nodes = [
        torchrun({"NNODES": "2", "NPROC": "1", "RUN_ID": "twonode", "MASTER_PORT": str(port)}, "--trainer.max_epochs=2")
        for _node in (0, 1)
    ]
    outs = [finish(p) for p in nodes]
    assert "run dir: runs/digits_mlp/torchrun-twonode" in outs[0]
    run = Path("runs/digits_mlp/torchrun-twonode")
    world = torch.load(run / "checkpoints/last.ckpt", weights_only=True)["trainkit_world"]
    assert world["world_size"] == 2 and world["num_nodes"] == 2 and world["global_batch"] == 128
    assert json.loads((run / "metrics.json").read_text())["val/acc"] > 0.5  # chance is 0.1; 20 steps


HOSTILE = "--run.name=a b;$(touch pwned)`id`'\""


def test_launch_dry_run_torchrun_quotes_every_value(capsys):
    assert main(["launch", "--config", str(DEFAULT_RECIPE), "--devices", "2", "--dry-run", HOSTILE]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("plan: world size 2 = 1 node(s) x 2 device(s); global batch 128 = 64 x 2 x 1 accum")
    # the torchrun command line torchrun.sh runs, with its environment
    command = shlex.split(out[-1])
    assert command[-1] == HOSTILE, "the shell gives back exactly the value"
    run = command.index("torch.distributed.run")
    assert command[0] == "env" and command[run - 2:run] == [sys.executable, "-m"]
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in command and "TORCH_NCCL_ASYNC_ERROR_HANDLING=1" in command
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert f"OMP_NUM_THREADS={threads}" in command or "OMP_NUM_THREADS" in os.environ
    assert command[run + 1:run + 4] == ["--nnodes=1", "--nproc-per-node=2", "--max-restarts=0"]
    assert "--rdzv-backend=c10d" in command and "--rdzv-endpoint=127.0.0.1:29500" in command
    assert command[-7:-1] == ["trainkit", "fit", "--config", str(DEFAULT_RECIPE), "--trainer.num_nodes=1", "--trainer.devices=2"]
    assert not Path("pwned").exists() and not Path("runs").exists(), "a dry run starts and writes nothing"


def test_launch_dry_run_slurm_renders_the_template_with_quoted_values(capsys, tmp_path):
    args = ["launch", "--config", str(DEFAULT_RECIPE), "--slurm", "--nodes", "2", "--devices", "4", "--dry-run",
            "--partition", "gpu", "--time", "00:30:00", HOSTILE, "--model.optimizer.lr=0.05"]
    assert main(args) == 0
    out = capsys.readouterr().out
    plan, script = out.split("\n", 1)
    assert "world size 8 = 2 node(s) x 4 device(s)" in plan and "global batch 512" in plan
    if script.startswith("note: sinfo is not reachable"):  # no SLURM controller here: no CPUs per task
        script = script.split("\n", 1)[1]
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --partition=gpu",
                 "#SBATCH --time=00:30:00", "#SBATCH --signal=USR1@90", "#SBATCH --requeue"):
        assert line in script.splitlines(), line
    # the rendered script, run by bash, receives exactly the recipe and the overrides
    probe = tmp_path / "probe.sh"
    head = script.split("set -euo pipefail")[0]
    probe.write_text(head + 'printf "%s\\n" "$@"\n')
    got = subprocess.run(["bash", str(probe)], capture_output=True, text=True, cwd=tmp_path).stdout.splitlines()
    assert got == [str(DEFAULT_RECIPE), HOSTILE, "--model.optimizer.lr=0.05"]
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--slurm", "--partition", "gpu;rm -rf /"], ["--partition", "plain word"]),
        (["--nodes", "0"], ["--nodes", ">= 1"]),
        (["--model.arch=mlpp"], ["model.arch", "'mlp'"]),
        (["stray"], ["stray", "--key=value"]),
        (["--nodes", "2", "--torchrun"], ["--nodes 2", "--run-id"]),
    ],
)
def test_launch_refuses_bad_input_before_starting_anything(argv, words, capsys):
    assert main(["launch", "--config", str(DEFAULT_RECIPE), "--dry-run", *argv]) == 2
    out, err = capsys.readouterr()
    assert all(w in err for w in words), err
    assert "plan:" not in out, "refused before the plan"
    assert not Path("runs").exists()


@pytest.mark.slow  # over 10 s: CI's slow pass (the default suite's budget)
def test_resume_on_another_world_size_reports_it_and_rescales_the_lr():
    scaling = ["--model.lr_scaling={rule: linear, base_batch_size: 64}", "--data.batch_size=32", "--run.name=grow"]
    one = trainkit("fit", "--config", str(DEFAULT_RECIPE), *COMMON, *scaling, "--trainer.max_epochs=1")
    assert one.returncode == 0, one.stderr[-3000:]
    run = Path("runs/digits_mlp/grow")

    def lr(ckpt: dict) -> float:
        return ckpt["optimizer_states"][0]["param_groups"][0]["lr"]

    before = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert lr(before) == pytest.approx(0.1 * 32 / 64)
    out = finish(torchrun({"NPROC": "2", "RUN_ID": "unused"}, *scaling, "--trainer.max_epochs=2"))
    assert "world size changed since the checkpoint: 1 -> 2 processes, global batch 32 -> 64; lr x 2" in out
    after = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert after["trainkit_world"]["world_size"] == 2 and after["epoch"] == 1
    assert lr(after) == pytest.approx(0.1 * 64 / 64), "the lr follows the new global batch"
    # last.ckpt of the first run already knew best.ckpt (it was saved after it)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt", "previous.ckpt"]


def test_any_rank_vote_is_the_same_on_every_rank_one_call_late(tmp_path):
    import torch.multiprocessing as mp
    from ddp_workers import any_rank_worker

    mp.spawn(any_rank_worker, args=(2, free_port(), str(tmp_path / "vote")), nprocs=2)
    decided = [json.loads((tmp_path / f"vote.rank{r}").read_text()) for r in range(2)]
    # rank 1 alone flags from call 3: both ranks decide True from call 4 on, at the same call
    assert decided[0] == decided[1] == [False, False, False, False, True, True]
