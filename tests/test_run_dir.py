"""A run dir is enough (issue 20 items 1-4, issue 19 items 3 and 16): commands on a run use its
config.yaml, evaluations keep the fit's W&B record and refuse what cannot apply to a trained
checkpoint, refused input writes nothing, and "best" has one definition.

One small fit (W&B offline, the recipe's loader settings) serves every command below.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import DEFAULT_RECIPE, QUIET, tree_digest
from wandb_records import read_run

from trainkit.cli import main

R = str(DEFAULT_RECIPE)
SMALL = ["--trainer.limit_train_batches=4", "--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2", *QUIET]
TRAINED = ["--model.arch_args={depth: 2, width: 32}", "--model.optimizer.lr=0.05"]


def fit_small(name: str, *extra: str) -> Path:
    assert main(["fit", "--config", R, f"--run.name={name}", "--trainer.max_epochs=2", *SMALL, *TRAINED, *extra]) == 0
    return Path("runs/digits_mlp") / name


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small fit for the whole module, made as the autouse `isolated` fixture makes runs."""
    where = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        for var in [v for v in os.environ if v.startswith(("WANDB_", "TRAINKIT_", "SLURM_"))]:
            mp.delenv(var)
        (where / "home").mkdir()
        mp.setenv("HOME", str(where / "home"))
        mp.setenv("WANDB_SILENT", "true")
        mp.chdir(where)
        saved = dict(os.environ)
        fit_small("small")
        for var in set(os.environ) - set(saved):
            del os.environ[var]
    return where / "runs" / "digits_mlp" / "small"


@pytest.fixture
def small(trained: Path, isolated: Path) -> Path:
    """A copy of the trained run in this test's own directory."""
    run = Path("runs/digits_mlp/small")
    shutil.copytree(trained, run)
    return run


def test_commands_on_a_run_use_its_config_and_keep_its_wandb_record(small, capsys):
    run = small
    fit_val_points = sum("val/acc" in h for h in read_run(run)["history"])
    capsys.readouterr()

    # no --config: the run's own recipe (a width-32 net; the default recipe would build width 256)
    assert main(["test", "--run.name=small", *SMALL]) == 0
    exact = json.loads((run / "metrics.json").read_text())["test/auroc"]
    assert main(["validate", "--run.name", "small", *SMALL]) == 0
    assert main(["predict", "--run.name=small", "--run.experiment=digits_mlp", *QUIET]) == 0
    rows = (run / "predictions.csv").read_text().splitlines()  # the test split: 15% of 1797 digits
    assert len(rows) == 1 + 269 and rows[0].startswith("index,pred,label,target,prob_0")

    # the fit's W&B config is the trained recipe still; each evaluation added its own entry
    records = read_run(run)
    assert len(records["ids"]) == 1 and len(records["files"]) == 3, "predict starts no W&B run"
    config = records["config"]
    assert config["model"]["arch_args"] == {"depth": 2, "width": 32} and config["model"]["optimizer"]["lr"] == 0.05
    assert config["test"] == {"checkpoint": "checkpoints/best.ckpt"} and config["validate"] == config["test"]
    # a validate's metrics are its own keys: no extra point on the fit's val/* curves
    assert sum("val/acc" in h for h in records["history"]) == fit_val_points
    assert any("validate/val/acc" in h for h in records["history"])
    assert any("test/acc" in h for h in records["history"])
    out = capsys.readouterr().out
    assert "3 parts of run" in out and f"wandb sync {run}/wandb/offline-run-*" in out

    # an evaluation setting applies over the checkpoint's; a training key is named, not applied
    before = tree_digest(run / "checkpoints")
    assert main(["test", "--run.name=small", "--model.auroc_thresholds=2", "--model.optimizer.lr=0.5", *SMALL]) == 0
    binned = json.loads((run / "metrics.json").read_text())["test/auroc"]
    assert binned != exact, "two thresholds give a coarser AUROC than the exact one"
    err = capsys.readouterr().err
    assert "warning: model.optimizer differs from the checkpoint's" in err
    assert "model.auroc_thresholds=2" in err
    assert read_run(run)["config"]["test"] == {"checkpoint": "checkpoints/best.ckpt", "auroc_thresholds": 2}
    assert tree_digest(run / "checkpoints") == before


@pytest.mark.parametrize(
    "argv, words",
    [
        # a recipe of another network: refused, naming each key and both values
        (["test", "--config", R, "--run.name=small"],
         ["model.arch_args.depth: recipe 3, checkpoint 2", "model.arch_args.width: recipe 256, checkpoint 32"]),
        (["predict", "--run.name=small", "--model.activation=tanh"], ["model.activation: recipe \"tanh\", checkpoint \"relu\""]),
        # other data than the checkpoint was trained on
        (["predict", "--run.name=small", "--data.dataset=breast_cancer"], ["10 classes", "(1, 8, 8)", "2 classes", "(30,)"]),
        (["test", "--run.name=small", "--model.bogus=1"], ["model.bogus"]),
        (["validate", "--run.name=smal"], ["run.name", "'smal'", "digits_mlp/small"]),
        (["test", "--run.name=small", "--ckpt_path=nope.ckpt"], ["ckpt_path", "nope.ckpt", "best.ckpt"]),
    ],
    ids=["other-net", "other-activation", "other-data", "unknown-key", "unknown-run", "missing-ckpt"],
)
def test_refused_evaluations_write_nothing(argv, words, small, capsys):
    run = small
    before = tree_digest(run)
    capsys.readouterr()
    assert main([*argv, *QUIET]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len([line for line in err.splitlines() if "error:" in line]) == 1, err
    for word in words:
        assert word in err, f"{word!r} missing from {err}"
    after = tree_digest(run)
    # the fit's own W&B service may still be closing its files: the refused command adds none
    assert after.keys() == before.keys(), "no W&B part, log or file was added"
    assert {k: v for k, v in after.items() if not k.startswith("wandb/")} == {
        k: v for k, v in before.items() if not k.startswith("wandb/")}, "no log line or metric was added"


def test_doctor_of_a_run_checks_its_recipe(small, capsys):
    run = small
    main(["doctor", "--run.name=small", "--overfit-steps=10", "--sweep-steps=20", "--data.num_workers=0"])
    out = capsys.readouterr().out
    doctor_dir = Path(out.strip().splitlines()[-1].removeprefix("run dir: "))
    assert doctor_dir.parent == run.parent and doctor_dir.name.startswith("doctor-")
    report = json.loads((doctor_dir / "doctor.json").read_text())
    assert report["recipe"] == str(run / "config.yaml")
    import yaml

    assert yaml.safe_load((doctor_dir / "config.yaml").read_text())["model"]["arch_args"]["width"] == 32


def test_a_users_model_checkpoint_does_not_redefine_best(isolated, capsys):
    mine = "[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: {monitor: val/loss, mode: min, save_top_k: 2}}]"
    run = fit_small("own", f"--trainer.callbacks={mine}")
    err = capsys.readouterr().err
    assert "your ModelCheckpoint (monitor val/loss) saves to" in err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["fit/best_checkpoint"] == "best.ckpt"
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    ours = next(v for k, v in best["callbacks"].items() if "'monitor': 'val/acc'" in k)
    # fit reports best.ckpt's score (val/acc, the recipe's checkpoint.monitor), and test loads that file
    assert abs(float(ours["best_model_score"]) - metrics["val/acc"]) < 1e-6
    assert len(list((run / "checkpoints" / "extra").glob("*.ckpt"))) == 2
    assert main(["test", "--run.name=own", *SMALL]) == 0
    assert json.loads((run / "metrics.json").read_text())["test/checkpoint"].endswith("checkpoints/best.ckpt")
    # one that would keep the same best as trainkit's is refused before anything is written
    same = "[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: {monitor: val/acc, mode: max}}]"
    capsys.readouterr()
    assert main(["fit", "--config", R, "--run.name=twice", f"--trainer.callbacks={same}", *SMALL]) == 2
    assert "trainer.callbacks" in capsys.readouterr().err and not Path("runs/digits_mlp/twice").exists()
