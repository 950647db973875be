"""Training control (issue 12): early stopping with smoothing, the fit verdict, predict --input,
gradient accumulation and mixed precision in the lr plan."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from conftest import DEFAULT_RECIPE, QUIET

from trainkit.callbacks.early_stopping import EarlyStoppingConfig, SmoothedEarlyStopping
from trainkit.cli import main
from trainkit.data.datamodule import DataModule
from trainkit.runner import TrainkitCLI
from trainkit.verdict import fit_verdict

FAST = ["--data.num_workers=0", "--trainer.logger=false", *QUIET]


def fit(name: str, *overrides: str) -> dict:
    assert main(["fit", "--config", str(DEFAULT_RECIPE), "--run.name", name, *FAST, *overrides]) == 0
    return json.loads(Path(f"runs/digits_mlp/{name}/metrics.json").read_text())


# -- early stopping --------------------------------------------------------------------------
def test_plateau_stops_after_patience_and_reports_the_best_epoch(capsys):
    # lr 0 from epoch 3 on: the weights, hence val/loss, stay exactly those of epoch 2
    m = fit(
        "plateau",
        "--early_stopping={monitor: val/loss, patience: 3}",
        "--model.schedule={name: multistep, milestones: [2], gamma: 0.0}",
        "--model.arch_args={depth: 1, width: 32}",
        "--trainer.max_epochs=20",
    )
    assert m["fit/early_stopped"] is True
    assert (m["fit/epochs"], m["fit/stopped_epoch"], m["fit/best_epoch"], m["fit/es_best_epoch"]) == (5, 5, 2, 2)
    assert "val/loss" in m["fit/stop_reason"] and "for 3 epochs after epoch 2" in m["fit/stop_reason"]
    out = capsys.readouterr().out
    assert f"fit/stop_reason: {m['fit/stop_reason']}" in out
    # best.ckpt was ranked by the early-stopping metric, not the recipe's checkpoint.monitor (val/acc)
    best = torch.load("runs/digits_mlp/plateau/checkpoints/best.ckpt", weights_only=True)
    ckpt_state = next(v for k, v in best["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert "val/loss" in next(k for k in best["callbacks"] if k.startswith("ModelCheckpoint"))
    assert abs(float(ckpt_state["best_model_score"]) - m["val/loss"]) < 1e-6
    config = Path("runs/digits_mlp/plateau/config.yaml").read_text()
    assert "monitor: val/loss" in config and "patience: 3" in config


class Scripted(pl.LightningModule):
    """Trains a real layer but logs a planted val/loss series, one value per epoch."""

    def __init__(self, series: list[float]):
        super().__init__()
        self.series = series
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.series[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def run_series(series: list[float], smoothing: float, patience: int = 1) -> int:
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2)), batch_size=4)
    es = SmoothedEarlyStopping(EarlyStoppingConfig("val/loss", patience=patience, smoothing=smoothing))
    trainer = pl.Trainer(
        max_epochs=len(series), callbacks=[es], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(Scripted(series), data, data)
    return trainer.current_epoch


def test_smoothing_rides_out_one_bad_epoch():
    improving_with_a_bad_epoch = [1.0, 0.9, 0.8, 0.85, 0.7, 0.6, 0.5]
    assert run_series(improving_with_a_bad_epoch, smoothing=0.0) == 4, "raw metric: patience 1 stops at the bad epoch"
    assert run_series(improving_with_a_bad_epoch, smoothing=0.5) == 7, "EMA: the bad epoch does not stop the run"
    assert run_series([1.0, 0.9, 0.8, 1.2, 1.3, 1.4, 1.5], smoothing=0.5) == 4, "a real rise still stops it"


@pytest.mark.parametrize(
    "value, key",
    [("{monitor: val/los}", "early_stopping.monitor"), ("{patience: 0}", "early_stopping.patience"),
     ("{smoothing: 1.0}", "early_stopping.smoothing"), ("{mode: up}", "early_stopping.mode")],
)
def test_bad_early_stopping_is_refused_by_key(value, key, capsys):
    assert main(["fit", "--config", str(DEFAULT_RECIPE), f"--early_stopping={value}", *FAST]) == 2
    assert key in capsys.readouterr().err
    assert not Path("runs").exists()


# -- fit verdict -----------------------------------------------------------------------------
def test_verdict_over_fitting_wide_mlp_on_10_percent_of_digits():
    m = fit(
        "over",
        "--data.val_fraction=0.2",
        "--data.test_fraction=0.7",
        "--model.arch_args={depth: 2, width: 512}",
        "--model.optimizer={name: sgd, lr: 0.1, momentum: 0.9}",
        "--trainer.max_epochs=10",
    )
    v = m["verdict"]
    assert v["verdict"] == "over-fitting", v
    assert v["train_loss"] < 0.05 and v["val_loss"] - v["train_loss"] > 0.3
    assert "training samples" in v["line"]


def test_verdict_under_fitting_weight_decay_too_strong():
    m = fit("under", "--model.optimizer.weight_decay=0.5", "--model.arch_args={depth: 1, width: 64}", "--trainer.max_epochs=3")
    v = m["verdict"]
    assert v["verdict"] == "under-fitting", v
    assert v["train_loss"] > 0.3 * np.log(10) and abs(v["gap"]) < 0.1 * np.log(10)


def test_verdict_diverged_lr_too_high():
    # lr 1.5 blows the loss above chance in epoch 1; the ReLUs die and it stays at chance (this
    # was "under-fitting")
    m = fit("diverged", "--model.optimizer.lr=1.5", "--model.arch_args={depth: 1, width: 64}", "--trainer.max_epochs=3")
    v = m["verdict"]
    assert v["verdict"] == "diverged" and "lr is likely too high" in v["reason"], v
    assert v["val_loss"] > 0.9 * np.log(10)


C10 = float(np.log(10))
DIVERGED = ([2.7989, 2.3904, 2.3202, 2.3168, 2.3185, 2.3127], [2.7729, 2.3936, 2.321, 2.3196, 2.3152, 2.3133])  # lr 0.6 on digits
STEADY = ([2.279 - 0.0245 * i for i in range(10)], [2.28 - 0.0245 * i for i in range(10)])  # 2.279 -> 2.058 at lr 3e-3


@pytest.mark.parametrize("val, train, expected, before", [
    # the cases the review found, with the verdict the old rules gave
    ([1.20, 0.29, 0.17], [1.13, 0.25, 0.08], "still improving", "converged"),
    (*DIVERGED, "diverged", "under-fitting"),
    ([0.3, 0.1, 0.06, 0.043, 0.045, 0.052], [0.3, 0.08, 0.04, 0.02, 0.01, 0.005], "converged", "over-fitting"),  # +0.009
    (*STEADY, "still improving", "under-fitting"),
    # and one curve per verdict
    ([1.2, 0.3], [1.1, 0.2], "too short to judge", "converged"),
    ([1.2, 0.3, float("nan")], [1.1, 0.2, float("nan")], "diverged", "converged"),
    ([1.0, 0.3, 0.2, 0.5, 0.9], [0.9, 0.2, 0.1, 0.4, 0.8], "diverged", "under-fitting"),  # both climb back
    ([1.0, 0.5, 0.3, 0.35, 0.45, 0.6], [0.9, 0.4, 0.2, 0.1, 0.05, 0.02], "over-fitting", "over-fitting"),
    ([1.0, 0.6, 0.5, 0.48, 0.47, 0.47], [0.5, 0.1, 0.03, 0.01, 0.005, 0.003], "over-fitting", "over-fitting"),  # gap
    ([2.3026, 2.3028, 2.3032, 2.3028, 2.3028], [2.3028, 2.3027, 2.3032, 2.3031, 2.3031], "under-fitting", "under-fitting"),
    ([1.0, 0.3, 0.2, 0.21, 0.19, 0.2, 0.21], [0.9, 0.25, 0.15, 0.15, 0.14, 0.14, 0.14], "converged", "converged"),
    # a new minimum smaller than the noise of the last epochs is no trend
    ([1.0, 0.5, 0.62, 0.45, 0.6, 0.44, 0.58, 0.42], [0.9, 0.4, 0.4, 0.38, 0.38, 0.37, 0.37, 0.36], "converged", "still improving"),
])
def test_verdict_rules_are_scale_aware(val, train, expected, before):
    v = fit_verdict(val, train, 10, stopped_early=False)
    assert v["verdict"] == expected, v
    assert old_verdict(val, train) == before, "the case shows what the old rules said"


def old_verdict(val: list[float], train: list[float]) -> str:
    """The rules before issue 19 (relative rise > 20%, gains over a fixed 3-epoch window)."""
    best = min(range(len(val)), key=val.__getitem__)
    rise, gap = (val[-1] - val[best]) / val[best], val[-1] - train[-1]
    gain = min(val[:-3]) - min(val[-3:]) if len(val) > 3 else 0.0
    if (rise > 0.2 and train[-1] < train[best]) or gap > 0.15 * C10:
        return "over-fitting"
    if train[-1] > 0.3 * C10 and abs(gap) < 0.1 * C10:
        return "under-fitting"
    return "still improving" if gain > 0.01 * C10 else "converged"


def test_an_early_stopped_run_is_not_still_improving():
    v = fit_verdict(*STEADY, 10, stopped_early=True)
    assert v["verdict"] == "under-fitting", v


# (the default recipe's "converged" verdict is checked in test_e2e.py, on its full fit)


# -- predict on a short run's checkpoint, against `trainkit test` ---------------------------------
@pytest.fixture(scope="module")
def default_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("default")
    args = ["--run.root", str(root), "--run.name", "d", "--model.arch_args={depth: 1, width: 64}", *FAST]
    assert main(["fit", "--config", str(DEFAULT_RECIPE), *args, "--trainer.max_epochs=3"]) == 0
    assert main(["test", "--config", str(DEFAULT_RECIPE), *args, "--ckpt_path", "best"]) == 0
    return root / "digits_mlp" / "d"


def predict(run_dir: Path, *extra: str) -> int:
    args = ["--run.root", str(run_dir.parents[1]), "--run.name", run_dir.name, "--ckpt_path", "best", *FAST,
            "--model.arch_args={depth: 1, width: 64}"]
    return main(["predict", "--config", str(DEFAULT_RECIPE), *args, *extra])


def read_csv(path: Path) -> tuple[list[dict], np.ndarray]:
    rows = list(csv.DictReader(path.open()))
    probs = np.array([[float(r[f"prob_{c}"]) for c in range(10)] for r in rows])
    return rows, probs


def test_predict_test_split_matches_trainkit_test(default_run):
    assert predict(default_run) == 0
    rows, probs = read_csv(default_run / "predictions.csv")
    dm = DataModule(num_workers=0)
    dm.setup()
    assert len(rows) == len(dm.splits["test"])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    preds = np.array([int(r["pred"]) for r in rows])
    assert (preds == probs.argmax(axis=1)).all()
    assert [r["label"] for r in rows] == [str(p) for p in preds]  # digits' class names are "0".."9"
    targets = np.array([int(r["target"]) for r in rows])
    assert (targets == dm.arrays["test"][1]).all()
    test_acc = json.loads((default_run / "metrics.json").read_text())["test/acc"]
    assert abs((preds == targets).mean() - test_acc) < 1e-6


def test_predict_csv_of_features_and_folder_of_images(default_run, tmp_path):
    dm = DataModule(num_workers=0)
    dm.setup()
    x = dm.arrays["test"][0][:40]  # raw digits (0-16): the CSV holds features as the dataset does
    feats = tmp_path / "feats.csv"
    np.savetxt(feats, x.reshape(len(x), -1), delimiter=",", header=",".join(f"f{i}" for i in range(64)), comments="")
    assert predict(default_run, "--input", str(feats)) == 0
    rows, probs = read_csv(default_run / "predictions_feats.csv")
    assert len(rows) == 40
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    # same inputs, same preprocessing (training-split standardization): same probabilities as the split
    assert predict(default_run, "--input", "test") == 0
    _, test_probs = read_csv(default_run / "predictions.csv")
    np.testing.assert_allclose(probs, test_probs[:40], atol=2e-6)

    import cv2

    folder = tmp_path / "images"
    folder.mkdir()
    for i, img in enumerate(x[:, 0]):
        cv2.imwrite(str(folder / f"{i:02d}.png"), np.round(img * 255 / 16).astype(np.uint8))
    assert predict(default_run, "--input", str(folder)) == 0
    rows, probs = read_csv(default_run / "predictions_images.csv")
    assert [r["source"] for r in rows] == [f"{i:02d}.png" for i in range(40)]
    preds = np.array([int(r["pred"]) for r in rows])
    assert (preds == probs.argmax(axis=1)).all()
    # 8-bit files rescaled to the dataset's 0-16 range: the same digits, nearly the same answers
    assert (preds == test_probs[:40].argmax(axis=1)).mean() >= 0.9


def test_predict_input_is_checked(default_run, capsys):
    assert predict(default_run, "--input", "nowhere.csv") == 2
    assert "input:" in capsys.readouterr().err
    assert main(["fit", "--config", str(DEFAULT_RECIPE), "--input", "test", *FAST]) == 2


# -- gradient accumulation and mixed precision ---------------------------------------------------
def build(*overrides: str) -> TrainkitCLI:
    return TrainkitCLI(["fit", "--config", str(DEFAULT_RECIPE), "--trainer.fast_dev_run=true", *FAST, *overrides])


def test_gradient_accumulation_counts_in_the_lr_plan():
    scaling = "--model.lr_scaling={rule: linear, base_batch_size: 64}"
    plain = build(scaling).trainer.optimizers[0].param_groups[0]["lr"]
    accum = build(scaling, "--trainer.accumulate_grad_batches=4").trainer.optimizers[0].param_groups[0]["lr"]
    assert plain == pytest.approx(0.1) and accum == pytest.approx(0.4)


def test_bf16_mixed_precision_runs_the_forward_in_bf16_on_cpu():
    cli = build("--trainer.precision=bf16-mixed")
    assert cli.trainer.precision == "bf16-mixed"
    x = cli.datamodule.splits["val"][:8][0]
    with cli.trainer.precision_plugin.forward_context():
        assert cli.model(x).dtype == torch.bfloat16
    assert cli.model(x).dtype == torch.float32


def test_fit_without_validation_trains_and_records_its_epochs():
    # trainer.limit_val_batches: 0 switches validation off: no val metrics, no best checkpoint,
    # but the fit finishes (exit 0) with its epochs, throughput and last.ckpt
    record = fit("noval", "--trainer.limit_val_batches=0", "--trainer.max_epochs=2")
    assert record["fit/epochs"] == 2 and record["fit/best_checkpoint"] is None
    assert record["perf/train_samples_per_s"] > 0 and not any(k.startswith("val/") for k in record)
    assert Path("runs/digits_mlp/noval/checkpoints/last.ckpt").is_file()
    # ... and says so, with the training metrics it has in place of val ones
    assert record["fit/validation"].startswith("none (trainer.limit_val_batches: 0): no best.ckpt")
    assert 0.5 < record["train/acc"] <= 1 and "verdict" not in record


def test_val_fraction_0_trains_and_reports_what_exists(capsys):
    # the recipe's defaults (W&B offline, 2 workers): no split to validate on, so no best.ckpt
    # and no verdict; fit says so and reports the last epoch's training metrics
    args = ["--config", str(DEFAULT_RECIPE), "--run.name=nv", "--data.val_fraction=0", "--trainer.max_epochs=2"]
    assert main(["fit", *args]) == 0
    out = capsys.readouterr().out
    record = json.loads(Path("runs/digits_mlp/nv/metrics.json").read_text())
    assert record["fit/validation"].startswith("none (data.val_fraction: 0): no best.ckpt and no verdict")
    assert f"fit/validation: {record['fit/validation']}" in out and "train/acc" in out
    assert record["train/acc"] > 0.5 and not any(k.startswith("val/") for k in record)
    assert sorted(p.name for p in Path("runs/digits_mlp/nv/checkpoints").iterdir()) == ["last.ckpt", "previous.ckpt"]
    assert main(["test", *args, "--ckpt_path=last"]) == 0  # the model it names is testable
    assert json.loads(Path("runs/digits_mlp/nv/metrics.json").read_text())["test/acc"] > 0.5
    # early stopping on a val metric cannot work without a val split: refused before any file
    assert main(["fit", *args, "--run.name=es", "--early_stopping={monitor: val/loss}"]) == 2
    assert "early_stopping.monitor: monitors val/loss, but data.val_fraction: 0" in capsys.readouterr().err
    assert not Path("runs/digits_mlp/es").exists()


def test_an_integer_limit_val_batches_is_a_count_of_batches():
    # typing's union cache made Lightning's Union[int, float] float first: 1 read as 1.0 (all
    # batches). Tests passed --trainer.limit_val_batches=1 only to run faster, and never looked
    cli = TrainkitCLI(["fit", "--config", str(DEFAULT_RECIPE), *FAST, "--trainer.max_epochs=1",
                       "--trainer.limit_val_batches", "1", "--trainer.limit_train_batches", "2"])
    assert cli.trainer.limit_val_batches == 1 and isinstance(cli.trainer.limit_val_batches, int)
    assert cli.trainer.num_val_batches == [1] and cli.trainer.num_training_batches == 2
    for value, expected in (("1.0", 1.0), ("0.5", 0.5), ("3", 3)):
        parsed = TrainkitCLI(["fit", "--config", str(DEFAULT_RECIPE), *FAST, f"--trainer.limit_val_batches={value}",
                              f"--trainer.val_check_interval={value}"], run_stage=False).trainer
        assert type(parsed.limit_val_batches) is type(expected) and parsed.limit_val_batches == expected
        assert type(parsed.val_check_interval) is type(expected)


def test_the_best_checkpoints_final_validation_is_not_a_point_of_the_val_curves():
    # fit validates best.ckpt once more to report it; logged as val/*, that replay was one more
    # point at the end of every val curve (W&B and CSV), jumping back to the best epoch's value
    from wandb_records import read_run

    assert main(["fit", "--config", str(DEFAULT_RECIPE), "--run.name=curve", "--trainer.max_epochs=3", *QUIET,
                 "--model.arch_args={depth: 1, width: 32}", "--model.optimizer.lr=0.5"]) == 0
    run_dir = Path("runs/digits_mlp/curve")
    record = json.loads((run_dir / "metrics.json").read_text())
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    history = read_run(run_dir)["history"]
    for source in (rows, history):
        val = [float(r["val/acc"]) for r in source if r.get("val/acc") not in (None, "")]
        best = [float(r["best/val/acc"]) for r in source if r.get("best/val/acc") not in (None, "")]
        assert len(val) == 3, "one point per epoch"
        assert best == [pytest.approx(record["val/acc"])] and max(val) == pytest.approx(record["val/acc"])
