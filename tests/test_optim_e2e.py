"""Optimization in real runs: schedules and warmup per step, plateau, clipping, lr scaling
under 2-process gloo DDP, and the LR range test."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import DEFAULT_RECIPE, QUIET, trainkit

from trainkit.cli import main
from trainkit.runner import TrainkitCLI

R = str(DEFAULT_RECIPE)
FAST = ["--data.num_workers=0", "--trainer.log_every_n_steps=1", *QUIET]


def logged_lrs(run_dir: Path) -> list[float]:
    """``train/lr`` of every step, as the run's CSV log recorded it."""
    with (run_dir / "metrics.csv").open() as f:
        return [float(r["train/lr"]) for r in csv.DictReader(f) if r.get("train/lr")]


def test_cosine_with_warmup_steps_sets_the_lr_of_every_step():
    W, steps = 3, 10
    assert main(["fit", "--config", R, *FAST, "--run.name=cos", "--trainer.max_steps=10", "--trainer.limit_val_batches=1",
                 "--model.schedule={name: cosine, unit: step, warmup_steps: 3}"]) == 0
    lrs = logged_lrs(Path("runs/digits_mlp/cos"))
    expected = [0.1 * (s + 1) / (W + 1) if s < W else 0.1 * 0.5 * (1 + math.cos(math.pi * (s - W) / (steps - W)))
                for s in range(steps)]
    assert lrs == pytest.approx(expected, abs=1e-7)


def test_step_schedule_in_epochs_drops_on_the_first_step_of_the_epoch():
    assert main(["fit", "--config", R, *FAST, "--run.name=st", "--trainer.max_epochs=3", "--trainer.limit_train_batches=4",
                 "--trainer.limit_val_batches=1", "--model.schedule={name: step, step_size: 1, gamma: 0.5}"]) == 0
    assert logged_lrs(Path("runs/digits_mlp/st")) == pytest.approx([0.1] * 4 + [0.05] * 4 + [0.025] * 4)


def test_plateau_cuts_the_lr_when_the_monitored_val_metric_stops_improving():
    # mode max on val/loss: a falling val loss is "no improvement", so with patience 0 the
    # lr is cut after the second validation
    assert main(["fit", "--config", R, *FAST, "--run.name=pl", "--trainer.max_epochs=3", "--trainer.limit_train_batches=4",
                 "--model.schedule={name: plateau, monitor: val/loss, mode: max, patience: 0, factor: 0.5}"]) == 0
    assert logged_lrs(Path("runs/digits_mlp/pl")) == pytest.approx([0.1] * 8 + [0.05] * 4)


def _weights(cli: TrainkitCLI) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in cli.model.parameters()])


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_gradient_clipping_from_the_trainer_flags_bounds_the_step(algorithm):
    def fit(lr: float, *clip: str) -> torch.Tensor:
        args = ["fit", "--config", R, *FAST, "--trainer.fast_dev_run=true", f"--model.optimizer={{name: sgd, lr: {lr}}}"]
        return _weights(TrainkitCLI([*args, *clip]))

    start = fit(0.0)  # lr 0: the seeded initial weights
    clip = 1e-3
    free = fit(1.0) - start
    clipped = fit(1.0, f"--trainer.gradient_clip_val={clip}", f"--trainer.gradient_clip_algorithm={algorithm}") - start
    bound = clipped.norm() if algorithm == "norm" else clipped.abs().max()
    assert bound == pytest.approx(clip, rel=1e-3), "one SGD step of lr 1 moves by the clipped gradient"
    assert (free.norm() if algorithm == "norm" else free.abs().max()) > 10 * clip, "unclipped it moves further"


def _ddp_lr(rule: str, devices: int, name: str) -> tuple[float, str]:
    args = ["fit", "--config", R, *FAST, f"--run.name={name}", "--trainer.max_steps=2", "--trainer.limit_val_batches=1",
            "--trainer.accelerator=cpu", f"--trainer.devices={devices}", f"--model.lr_scaling={{rule: {rule}, base_batch_size: 64}}"]
    if devices > 1:
        proc = trainkit(*args, "--trainer.strategy=ddp", timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        out = proc.stdout + proc.stderr
    else:
        assert main(args) == 0
        out = ""
    run = Path(f"runs/digits_mlp/{name}")
    lrs = logged_lrs(run)
    hparams = yaml.safe_load((run / "hparams.yaml").read_text())
    assert lrs and all(lr == pytest.approx(hparams["lr_scaled"]) for lr in lrs), (lrs, hparams)
    assert hparams["global_batch"] == 64 * devices
    return lrs[0], out + hparams["lr_plan"]


# linear in the default suite, sqrt (25 s) in CI's slow pass
@pytest.mark.parametrize("rule, ratio", [("linear", 2.0), pytest.param("sqrt", math.sqrt(2.0), marks=pytest.mark.slow)])
def test_lr_scales_with_the_real_ddp_world_size(rule, ratio):
    single, _ = _ddp_lr(rule, 1, f"one-{rule}")
    double, out = _ddp_lr(rule, 2, f"two-{rule}")
    assert single == pytest.approx(0.1)
    assert double == pytest.approx(ratio * single)
    assert f"global batch 128 = 64 x 2 devices x 1 node x 1 accum; lr 0.1 -> {0.1 * ratio:.6g} ({rule}, base 64)" in out


def test_lr_find_on_digits_suggests_a_good_lr_and_writes_its_plot(capsys):
    # the default recipe's lr 0.1 trains digits to >= 0.95 val accuracy (tests/test_e2e.py)
    assert main(["lr-find", "--config", R, *QUIET, "--data.num_workers=0", "--run.name=lrf", "--min-lr=1e-4",
                 "--max-lr=10", "--steps=60", "--write=tuned.yaml"]) == 0
    out = capsys.readouterr().out
    run = Path("runs/digits_mlp/lrf")
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("lr_find/steepest", "lr_find/min10"):
        assert 0.01 <= metrics[key] <= 1.0, metrics
    png = (run / "lr_find.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert f"suggested lr: {metrics['lr_find/steepest']:.3g} (steepest descent)" in out
    tuned = yaml.safe_load(Path("tuned.yaml").read_text())
    assert tuned["model"]["optimizer"]["lr"] == pytest.approx(metrics["lr_find/steepest"], rel=1e-2)
    assert tuned["model"]["optimizer"]["name"] == "sgd" and tuned["data"]["dataset"] == "digits"
    assert main(["lr-find", "--config", R, "--write=tuned.yaml"]) == 2, "never overwrites"


def test_batch_ramp_grows_the_batch_at_milestones_with_the_lr_kept():
    assert main(["fit", "--config", R, *FAST, "--run.name=ramp", "--trainer.max_epochs=4", "--trainer.limit_val_batches=1",
                 "--data.batch_ramp={milestones: [1, 3], factor: 2}"]) == 0
    with Path("runs/digits_mlp/ramp/metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/lr")]
    per_epoch = [sum(int(r["epoch"]) == e for r in rows) for e in range(4)]
    n_train = 1257  # digits' training split (70% of 1797)
    assert per_epoch == [math.ceil(n_train / b) for b in (64, 128, 128, 256)]
    assert [float(r["train/lr"]) for r in rows] == pytest.approx([0.1] * len(rows))


@pytest.mark.parametrize("unit", ["epoch", "step"])
def test_cosine_with_a_batch_ramp_is_planned_on_the_ramped_epochs_real_steps(unit):
    # the schedule's length was the first epoch's steps x max_epochs: with the batch doubling it
    # ended far above 0 (the test above only ever ran a constant lr, which has no length)
    assert main(["fit", "--config", R, *FAST, f"--run.name=ramp-{unit}", "--trainer.max_epochs=4",
                 "--trainer.limit_val_batches=1", "--data.batch_ramp={milestones: [1, 3], factor: 2}",
                 f"--model.schedule={{name: cosine, unit: {unit}}}"]) == 0
    lrs = logged_lrs(Path(f"runs/digits_mlp/ramp-{unit}"))
    per_epoch = [math.ceil(1257 / b) for b in (64, 128, 128, 256)]  # digits' training split is 1257
    assert len(lrs) == sum(per_epoch)
    # the schedule's time of each step: the step itself, or epochs on the ramped epochs' clock
    times = [e + i / n for e, n in enumerate(per_epoch) for i in range(n)] if unit == "epoch" else list(range(len(lrs)))
    total = 4 if unit == "epoch" else sum(per_epoch)
    expected = [0.1 * 0.5 * (1 + math.cos(math.pi * t / total)) for t in times]
    assert lrs == pytest.approx(expected, abs=1e-7)
    assert lrs[-1] < 0.1 * 0.01, "the cosine ends at ~0 with the run"
