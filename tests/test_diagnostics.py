"""Monitors (diag/ values against direct computations), the NaN guard, evaluation plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from conftest import DEFAULT_RECIPE, QUIET
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import wandb

from trainkit.callbacks.diagnostics import Monitors, dead_fraction, histogram_tensor, saturated_fraction, wandb_histogram
from trainkit.cli import main
from trainkit.data.datamodule import DataModule
from trainkit.module import Classifier

FAST = ["--data.num_workers=0", "--trainer.logger=false", *QUIET]


class Tiny(pl.LightningModule):
    """Linear(2, 4) with two units that can never fire on inputs >= 0, ReLU, Linear(4, 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2), nn.Tanh())
        with torch.no_grad():
            self.net[0].weight.copy_(torch.tensor([[-1.0, -1.0], [-2.0, -0.5], [1.0, 0.5], [0.3, 2.0]]))
            self.net[0].bias.zero_()
            self.net[2].bias.zero_()
            self.net[2].weight.copy_(torch.tensor([[30.0, 0.0, 30.0, 1.0], [0.0, 1.0, -1.0, 0.5]]))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_monitor_values_match_a_direct_computation(tmp_path: Path):
    x = torch.rand(16, 2) + 0.1
    y = torch.arange(16) % 2
    reference = Tiny()
    F.cross_entropy(reference.net(x), y).backward()
    hidden = torch.relu(reference.net[0](x))
    out = reference.net(x)

    monitors = Monitors(every_n_steps=1, histograms=False)
    trainer = pl.Trainer(max_steps=1, callbacks=[monitors], logger=CSVLogger(tmp_path), enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(Tiny(), DataLoader(TensorDataset(x, y), batch_size=16))
    got = monitors.last

    assert got["diag/dead/net.1"] == 0.5  # units 0 and 1 never fire on positive inputs
    assert got["diag/dead/net.1"] == dead_fraction(hidden)
    assert got["diag/saturated/net.3"] == pytest.approx(float((out.abs() >= 0.98).float().mean()))
    assert 0 < got["diag/saturated/net.3"] < 1
    g = reference.net[0].weight.grad.norm() ** 2 + reference.net[0].bias.grad.norm() ** 2
    assert got["diag/grad_norm/net.0"] == pytest.approx(float(g.sqrt()), rel=1e-5)
    w = reference.net[0].weight.detach()
    assert got["diag/weight_l1/net.0"] == pytest.approx(float(w.abs().sum()), rel=1e-6)  # bias is 0
    assert got["diag/weight_l2/net.0"] == pytest.approx(float(w.norm()), rel=1e-6)
    # plain SGD: the update is lr * grad, so the ratio is lr * ||g|| / ||w||
    assert got["diag/update_ratio/net.0"] == pytest.approx(0.1 * float(g.sqrt()) / float(w.norm()), rel=1e-5)
    assert got["diag/act_mean/net.1"] == pytest.approx(float(hidden.mean()), rel=1e-6)
    assert got["diag/lr"] == 0.1 and got["diag/throughput"] > 0
    rows = list(csv.DictReader(next(tmp_path.rglob("metrics.csv")).open()))
    assert float(rows[0]["diag/dead/net.1"]) == 0.5


def test_histograms_of_near_constant_values_log():
    # three float32 values one ulp apart, like the init study's vanished weights at step 50:
    # numpy's 64 bins over that range are not finite-sized (wandb.Histogram raised, the fit crashed)
    values = torch.ones(999) + (torch.arange(999) % 3) * 1.2e-7
    with pytest.raises(ValueError, match="Too many bins"):
        wandb.Histogram(values.numpy())
    hist = wandb_histogram(histogram_tensor(values).tolist())
    assert sum(hist.histogram) == 999 and len(hist.bins) == 65
    assert all(a < b for a, b in zip(hist.bins, hist.bins[1:])) and hist.bins[0] <= 1.0 <= 1.0 + 2.4e-7 <= hist.bins[-1]
    # an ordinary spread keeps its exact range
    spread = wandb_histogram(histogram_tensor(torch.tensor([0.0, 1.0, 2.0, 4.0])).tolist())
    assert (spread.bins[0], spread.bins[-1]) == (0.0, 4.0) and sum(spread.histogram) == 4


def test_fractions_on_handcrafted_tensors():
    maps = torch.zeros(4, 3, 2, 2)
    maps[1, 0, 0, 0] = 1.0  # channel 0 fires once; channels 1 and 2 never do
    assert dead_fraction(maps) == pytest.approx(2 / 3)
    assert saturated_fraction(torch.tensor([-1.0, -0.985, 0.0, 0.97]), -1.0, 1.0) == 0.5


def test_nan_guard_stops_with_a_diagnosis_and_keeps_the_last_good_checkpoint(capsys):
    code = main(["fit", "--config", str(DEFAULT_RECIPE), *FAST, "--model.optimizer.lr=1e4",
                 "--checkpoint.every_n_steps=1", "--trainer.max_epochs=1", "--run.name=nan"])
    err = capsys.readouterr().err
    assert code == 1
    message = err.strip().splitlines()[-1]
    assert message.startswith("trainkit: error: training diverged at step ")
    assert "lr=1e+04" in message and "first layer with" in message and "net." in message
    assert "lr is too high" in message and "detect_anomaly" in message
    ckpt = torch.load("runs/digits_mlp/nan/checkpoints/last.ckpt", weights_only=False)
    step = int(message.split("step ")[1].split(" ")[0])
    assert ckpt["global_step"] == step  # the state right before the bad step
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())

    # finite but huge weights: `test` on them finishes and says which outputs are not finite
    # (it used to crash in the ROC plot; the checks above never evaluated this checkpoint)
    assert main(["test", "--config", str(DEFAULT_RECIPE), *FAST, "--run.name=nan", "--ckpt_path=last"]) == 0
    out = capsys.readouterr().out
    model = Classifier(**{k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")})
    model.load_state_dict(ckpt["state_dict"])
    dm = DataModule(num_workers=0)
    dm.setup()
    with torch.no_grad():
        x = torch.stack([dm.splits["test"][i][0] for i in range(len(dm.splits["test"]))])
        bad = int((~torch.isfinite(model.eval()(x).softmax(-1)).all(1)).sum())
    assert bad > 0, "this checkpoint is one whose outputs overflow"
    metrics = json.loads(Path("runs/digits_mlp/nan/metrics.json").read_text())
    assert metrics["test/nonfinite_outputs"] == bad and f"test/nonfinite_outputs: {bad}" in out
    assert metrics["test/warning"].startswith(f"{bad} of {len(x)} test outputs are not finite")
    for name in ("confusion_matrix", "roc", "pr"):
        assert Path(f"runs/digits_mlp/nan/{name}.png").stat().st_size > 10_000


def test_fit_logs_diag_values_and_test_writes_evaluation_plots(capsys):
    args = ["--config", str(DEFAULT_RECIPE), "--data.num_workers=0", *QUIET, "--run.name=e"]
    assert main(["fit", *args, "--trainer.max_epochs=1", "--diagnostics.every_n_steps=5"]) == 0  # W&B + CSV
    rows = list(csv.DictReader(Path("runs/digits_mlp/e/metrics.csv").open()))
    logged = [r for r in rows if r.get("diag/grad_norm/net.1")]
    assert len(logged) == 4  # steps 0, 5, 10, 15 of the 20 in one epoch
    assert all(0 <= float(r["diag/dead/net.2"]) <= 1 for r in logged)
    assert main(["test", *args, "--trainer.logger=false"]) == 0
    out = capsys.readouterr().out
    for name in ("confusion_matrix", "roc", "pr"):
        path = Path("runs/digits_mlp/e") / f"{name}.png"
        assert f"test/plot_{name}: {path}" in out
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_bad_diagnostics_interval_is_bad_input(capsys):
    assert main(["fit", "--config", str(DEFAULT_RECIPE), *FAST, "--diagnostics.every_n_steps=0"]) == 2
    assert "diagnostics.every_n_steps: must be >= 1" in capsys.readouterr().err
    assert not Path("runs").exists()
