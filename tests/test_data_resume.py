"""Exact resume of the data path (issue 18 items 1-2, issue 16): augmentation and mixing streams
keyed by (seed, epoch, index), a lazy image folder read by 2 workers, a second resume."""

from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import QUIET, ROOT
from test_resume import EXE, assert_same_weights, kill_when, load

AUGMENT = ROOT / "recipes" / "digits_mlp_augment.yaml"
QUIETER = ["--trainer.logger=false", "--trainer.deterministic=true", *QUIET]


def run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("mid_epoch", [False, True], ids=["after-epoch-0", "mid-epoch"])
def test_augment_recipe_killed_and_relaunched_ends_bitwise_equal(mid_epoch):
    # the recipe as shipped (affine per sample, mixup/cutmix per batch), 3 epochs
    extra = [*QUIETER, "--trainer.max_epochs=2"] + (["--checkpoint.every_n_steps=5"] if mid_epoch else [])
    base = [EXE, "fit", "--config", str(AUGMENT), *extra]
    run([*base, "--run.name=full"])
    full = Path("runs/digits_mlp_augment/full/checkpoints/last.ckpt")
    per_epoch = load(full)["global_step"] // 2
    cut = Path("runs/digits_mlp_augment/cut/checkpoints/last.ckpt")
    if mid_epoch:
        ready = lambda c: c["global_step"] > 5 and c["global_step"] % per_epoch  # noqa: E731
    else:
        ready = lambda c: c["epoch"] >= 0 and c["global_step"] == per_epoch  # noqa: E731
    kill_when([*base, "--run.name=cut"], cut, ready)
    assert load(cut)["global_step"] < 2 * per_epoch
    run([*base, "--run.name=cut"])
    assert load(cut)["global_step"] == 2 * per_epoch
    assert_same_weights(full, cut)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_second_resume_trains_exactly_the_planned_steps_and_weights():
    # issue 18.2: a step checkpoint at an epoch's last batch made Lightning's epoch counters lag
    # after the first resume, and a second resume replayed a whole epoch (316 of 300 steps)
    base = [EXE, "fit", "--config", str(ROOT / "recipes" / "digits_mlp.yaml"), "--data.num_workers=0", *QUIETER]
    run([*base, "--run.name=first", "--checkpoint.every_n_steps=20", "--trainer.max_epochs=1"])
    first = Path("runs/digits_mlp/first/checkpoints")
    assert load(first / "last.ckpt")["global_step"] == 20, "digits: 20 steps per epoch"
    assert not (first / "previous.ckpt").exists(), "no step checkpoint at the epoch's last batch, only the epoch end's"
    loop = [*base, "--checkpoint.every_n_steps=4", "--trainer.max_epochs=5"]
    run([*loop, "--run.name=full"])
    cut = Path("runs/digits_mlp/cut/checkpoints/last.ckpt")
    for past in (28, 64):  # killed twice mid-epoch, resumed twice
        kill_when([*loop, "--run.name=cut"], cut, lambda c, past=past: c["global_step"] > past and c["global_step"] % 20)
    run([*loop, "--run.name=cut"])
    state = load(cut)
    assert state["global_step"] == 100 and state["epoch"] == 4
    progress = state["loops"]["fit_loop"]["epoch_progress"]["current"]
    assert progress["ready"] == progress["started"] == 5, progress
    assert_same_weights(Path("runs/digits_mlp/full/checkpoints/last.ckpt"), cut)


def colour_folder(root: Path, per_class: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(("a", "b", "c")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 90, (12, 12, 3), dtype=np.uint8)
            img[..., c] += 150
            cv2.imwrite(str(root / name / f"{i}.png"), img)
    return root


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_lazy_image_folder_with_2_workers_and_augmentation_resumes_bitwise_after_kill_9(tmp_path):
    root = colour_folder(tmp_path / "imgs")
    base = [EXE, "fit", "--config", str(ROOT / "recipes" / "digits_mlp.yaml"), "--data.dataset=image_folder",
            f"--data.root={root}", "--data.num_workers=2", "--data.batch_size=8", "--data.augment={train: cifar}",
            "--data.mix={mixup_alpha: 0.4, prob: 0.5}", "--model.dropout=0.2", "--trainer.max_epochs=2",
            "--checkpoint.every_n_steps=3", *QUIETER]
    run([*base, "--run.name=full"])
    full = Path("runs/digits_mlp/full/checkpoints/last.ckpt")
    per_epoch = load(full)["global_step"] // 2
    cut = Path("runs/digits_mlp/cut/checkpoints/last.ckpt")
    kill_when([*base, "--run.name=cut"], cut, lambda c: c["global_step"] > per_epoch and c["global_step"] % per_epoch)
    assert load(cut)["global_step"] % per_epoch, "killed mid-epoch"
    run([*base, "--run.name=cut"])
    assert_same_weights(full, cut)
