"""End to end through the real console script: fit, then test, on the embedded digits."""

from __future__ import annotations

import csv
import json
import re
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import DEFAULT_RECIPE, QUIET, trainkit
from wandb_records import read_run


def last_line_run_dir(stdout: str) -> Path:
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("run dir: "), last
    return Path(last.removeprefix("run dir: "))


# what issue 20 found on the console of a default fit and test; none of it may reach a person
NOISE = [
    "weights_only", "srun", "litlogger", "litmodels", "Tip:", "anonymous", "LeafSpec", "_pytree", "FLOPs", "Flops",
    "v_num", "Be aware that when using `ckpt_path`", "diag/", "GPU available", "Restoring states", "wandb:",
    "Sanity Checking", "Validation DataLoader",
]
# every line on stderr is one of these: the plan, the model's size, an epoch's metrics, the stop
NEEDED = [
    r"global batch \d+ = \d+ x \d+ device", r"model: [\d.]+ [KM]? ?parameters, [\d.]+ MB$",
    r"epoch \d+/\d+  train/loss \d\.\d{4}  val/loss \d\.\d{4}  val/acc \d\.\d{4}( \(best\))?  [\d.]+ s$",
    r"fit stopped: ",
]


def assert_quiet_console(proc, run_dir: Path, epochs: int) -> None:
    """The console holds what a person needs and none of the noise; the log file the rest."""
    out = proc.stdout + proc.stderr
    for noise in NOISE:
        assert noise not in out, f"{noise!r} on the console:\n{out[-4000:]}"
    for line in proc.stderr.splitlines():
        assert any(re.match(p, line) for p in NEEDED), f"unexpected console line {line!r}"
    assert len(re.findall(r"^epoch \d+/", proc.stderr, re.M)) == epochs
    if epochs:
        assert "Epoch 0:" in proc.stdout and "it/s" in proc.stdout, "a progress bar"
    # after the bar: the result table, key: value lines with rounded numbers, W&B, the log, the run dir
    tail = proc.stdout.split("\n")
    tail = tail[next(i for i, line in enumerate(tail) if line.startswith("metric ")):]
    assert tail[-1] == "" and tail[-2] == f"run dir: {run_dir}" and tail[-3].startswith(f"log: {run_dir}/trainkit.log")
    assert tail[-4].startswith("W&B: offline") and "wandb sync " in tail[-4]
    for line in tail[1:-4]:
        number = re.match(r"^[\w/]+(?:  +|: )(-?[\d.]+(?:e-?\d+)?)$", line)
        if number and "." in number.group(1):
            assert len(number.group(1).replace(".", "").lstrip("0")) <= 4, f"unrounded: {line}"
    log = (run_dir / "trainkit.log").read_text()
    assert "GPU available" in log and "Total params" in log and "[rank 0]" in log
    assert "weights_only" not in log, "trainkit's own checkpoint saving says what it saves"


def test_fit_then_test_on_digits(isolated):
    # the recipe's defaults, as a user runs it: progress bar and model summary on, W&B offline, 2 workers
    fit = trainkit("fit", "--config", str(DEFAULT_RECIPE), "--run.name", "e2e")
    assert fit.returncode == 0, fit.stderr[-3000:]
    run_dir = last_line_run_dir(fit.stdout)
    assert run_dir == Path("runs/digits_mlp/e2e")
    assert_quiet_console(fit, run_dir, epochs=20)

    # the run dir holds the resolved recipe, both checkpoints, final metrics and the W&B run
    recipe = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert recipe["model"]["arch"] == "mlp" and recipe["data"]["dataset"] == "digits"
    assert recipe["run"]["name"] == "e2e" and recipe["run"]["experiment"] == "digits_mlp"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["val/acc"] >= 0.95, metrics
    assert metrics["fit/epochs"] == 20
    assert not any(k.startswith("test/") for k in metrics), "fit must not look at the test split"
    # the fit verdict (issue 12): the default recipe converges within its 20 epochs
    assert metrics["verdict"]["verdict"] == "converged", metrics["verdict"]
    assert "verdict: converged: " in fit.stdout and "eval mode" in fit.stdout
    assert metrics["fit/stop_reason"] == "epoch budget" and metrics["fit/early_stopped"] is False
    # the printed table is the best checkpoint's validation metrics
    assert f"val/acc        {metrics['val/acc']:.4f}" in fit.stdout

    # fit reports the best checkpoint: its stored val/acc is the maximum over the epochs
    best = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    ckpt_cb = next(v for k, v in best["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert abs(float(ckpt_cb["best_model_score"]) - metrics["val/acc"]) < 1e-6

    # the run dir is enough: its config.yaml is the recipe
    test = trainkit("test", "--run.name", "e2e", "--ckpt_path", "best")
    assert test.returncode == 0, test.stderr[-3000:]
    assert last_line_run_dir(test.stdout) == run_dir
    assert_quiet_console(test, run_dir, epochs=0)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test/acc"] >= 0.93 and metrics["val/acc"] >= 0.95, metrics
    assert metrics["test/checkpoint"].endswith("checkpoints/best.ckpt")

    # W&B: offline (no credentials here), one run id for fit and test, history and config on disk
    records = read_run(run_dir)
    assert records["files"], "an offline W&B run is written in the run dir"
    assert records["ids"] == {(run_dir / "wandb_id").read_text().strip()}
    val_acc = [h["val/acc"] for h in records["history"] if "val/acc" in h]
    assert len(val_acc) == 20 and max(val_acc) >= 0.95  # one point per epoch (not the best.ckpt replay)
    assert any("test/acc" in h for h in records["history"])
    assert records["config"]["model"]["arch"] == "mlp"
    assert records["config"]["model"]["optimizer"] == recipe["model"]["optimizer"]
    assert records["config"]["data"]["dataset"] == "digits"
    # the test added its own entry and left the fit's config alone; the summary leads with metrics
    assert records["config"]["test"] == {"checkpoint": "checkpoints/best.ckpt"}
    assert "val/acc" in records["summary"] and "test/acc" in records["summary"]
    assert not [k for k in records["summary"] if k.startswith("diag/")], sorted(records["summary"])
    assert not any(k.startswith("val/") for h in records["history"] if "test/acc" in h for k in h)
    # the sync hint names every part of the run (one per invocation, the same run id)
    assert len(records["files"]) == 2 and f"2 parts of run {records['ids'].pop()}" in test.stdout


def test_resume_auto_continues_the_run_and_its_wandb_run(isolated):
    args = ["fit", "--config", str(DEFAULT_RECIPE), "--run.name", "r", "--data.num_workers=0", *QUIET]
    first = trainkit(*args, "--trainer.max_epochs=2")
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = Path("runs/digits_mlp/r")
    config_before = (run_dir / "config.yaml").read_text()
    steps_after_2 = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    csv_before = (run_dir / "metrics.csv").read_text().splitlines()
    second = trainkit(*args, "--trainer.max_epochs=4")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Restoring states from the checkpoint path at" in (run_dir / "trainkit.log").read_text()
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    # the step count continued from epoch 2 instead of starting again
    assert last["global_step"] == 2 * steps_after_2 and steps_after_2 > 0
    assert json.loads((run_dir / "metrics.json").read_text())["fit/epochs"] == 4
    # the changed override is said and recorded: config.yaml is the recipe in force, the history has the change
    assert "recipe changed since this run's config.yaml: trainer.max_epochs 2 -> 4" in second.stderr
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]["max_epochs"] == 4
    history = yaml.safe_load((run_dir / "config_history.yaml").read_text())
    assert history[0]["changes"] == {"trainer.max_epochs": {"from": 2, "to": 4}}
    assert history[0]["resumed_from"].endswith("checkpoints/last.ckpt")
    assert yaml.safe_load(config_before)["trainer"]["max_epochs"] == 2
    # one CSV history, continued: the first fit's epochs, then the resumed ones, no step twice
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    epochs = [int(r["epoch"]) for r in rows if r.get("val/acc") and r.get("epoch")]
    assert epochs == [0, 1, 2, 3], epochs  # four epochs, each once
    assert sum(1 for r in rows if r.get("best/val/acc")) == 2, "each fit reports its best checkpoint as best/val/*"
    assert len(rows) > len(csv_before) - 1 and not list(run_dir.glob("csv"))
    loss_steps = [int(r["step"]) for r in rows if r.get("train/loss_step")]
    assert loss_steps == sorted(set(loss_steps)) and max(loss_steps) > steps_after_2
    # the resumed run knew its best checkpoint: no best-v1.ckpt beside best.ckpt
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt", "previous.ckpt"]
    assert len(read_run(run_dir)["ids"]) == 1


@pytest.mark.slow  # over 10 s: CI's slow pass (the default suite's budget)
def test_resume_never_makes_a_new_version_and_keeps_the_old_run(isolated):
    from conftest import tree_digest

    args = ["fit", "--config", str(DEFAULT_RECIPE), "--run.name", "v", "--data.num_workers=0",
            "--trainer.max_epochs=1", *QUIET]
    assert trainkit(*args).returncode == 0
    before = tree_digest(Path("runs/digits_mlp/v"))
    again = trainkit(*args, "--run.resume=never")
    assert again.returncode == 0, again.stderr[-3000:]
    assert last_line_run_dir(again.stdout) == Path("runs/digits_mlp/v-v1")
    assert tree_digest(Path("runs/digits_mlp/v")) == before


def test_help_is_quick_and_module_entry_point_works():
    import subprocess

    start = time.perf_counter()
    out = trainkit("--help")
    assert out.returncode == 0 and "fit" in out.stdout and "list" in out.stdout
    assert time.perf_counter() - start < 5  # generous: the benchmark tracks the real figure
    mod = subprocess.run([sys.executable, "-m", "trainkit", "list", "datasets"], capture_output=True, text=True)
    assert mod.returncode == 0 and "digits" in mod.stdout and "breast_cancer" in mod.stdout
