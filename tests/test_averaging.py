"""EMA and SWA of the weights: the closed form, and checkpoints holding the averaged weights."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import DEFAULT_RECIPE, QUIET
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainkit.callbacks.averaging import RAW_KEY, WeightAveraging, ema_decay
from trainkit.runner import TrainkitCLI


class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(2, 1)
        with torch.no_grad():
            self.net.weight.copy_(torch.tensor([[0.5, -1.0]]))
            self.net.bias.fill_(0.25)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return ((self.net(x) - y) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Record(pl.Callback):
    def __init__(self):
        self.weights: list[torch.Tensor] = []

    def on_train_start(self, trainer, pl_module):
        self.weights.append(torch.nn.utils.parameters_to_vector(pl_module.net.parameters()).detach().clone())

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.weights.append(torch.nn.utils.parameters_to_vector(pl_module.net.parameters()).detach().clone())


def closed_form(weights: list[torch.Tensor], decay: float, warmup: bool) -> torch.Tensor:
    """e_T = prod_t d_t w_0 + sum_t (1 - d_t) prod_{s > t} d_s w_t."""
    T = len(weights) - 1
    d = [ema_decay(decay, warmup, t) for t in range(1, T + 1)]
    tail = [float(torch.tensor(d[t:]).prod()) for t in range(T + 1)]  # prod_{s > t} d_s
    return tail[0] * weights[0] + sum((1 - d[t - 1]) * tail[t] * weights[t] for t in range(1, T + 1))


def test_ema_weights_equal_the_closed_form():
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [0.0, 1.0], [2.0, -1.0]])
    y = torch.tensor([[1.0], [0.0], [0.5], [-1.0]])
    for warmup in (False, True):
        ema, record = WeightAveraging("ema", decay=0.8, warmup=warmup), Record()
        trainer = pl.Trainer(max_steps=6, callbacks=[record, ema], logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(Tiny(), DataLoader(TensorDataset(x, y), batch_size=2))
        assert len(record.weights) == 7 and not torch.equal(record.weights[0], record.weights[-1])
        got = torch.nn.utils.parameters_to_vector(ema.averaged.module.parameters())
        torch.testing.assert_close(got, closed_form(record.weights, 0.8, warmup), rtol=1e-6, atol=1e-7)


def fit(*overrides: str) -> TrainkitCLI:
    args = ["fit", "--config", str(DEFAULT_RECIPE), "--data.num_workers=0", "--trainer.logger=false",
            "--trainer.max_epochs=3", "--trainer.limit_train_batches=5", "--trainer.limit_val_batches=2", *QUIET]
    return TrainkitCLI([*args, *overrides])


def averaged_state(ckpt: dict) -> dict:
    """The WeightAveraging callback's saved AveragedModel state (the callback the fit ran with)."""
    return next(v["averaged"] for k, v in ckpt["callbacks"].items() if k.startswith("WeightAveraging"))


def on_device(tmp_path, kind: str) -> list[str]:
    """Overrides that run on the device the test has (CPU here; CUDA where one is lent) and
    record where the averaged copy lives: Callback.setup runs before Lightning moves the model,
    so a copy made there stays behind unless it is moved."""
    spec = json.dumps({"class_path": "planted.AveragedDevice", "init_args": {"out": str(tmp_path / kind)}})
    return [f"--trainer.accelerator={'gpu' if torch.cuda.is_available() else 'cpu'}", f"--trainer.callbacks+={spec}"]


def assert_on_device(tmp_path, kind: str, updates: int) -> None:
    got = json.loads((tmp_path / kind).read_text())
    assert got["copy"] == [got["module"]], got
    assert got["n"] == got["n_averaged"] == updates, "the Python counter and the saved buffer agree"


def test_checkpoints_hold_the_ema_weights_and_the_raw_ones(tmp_path):
    cli = fit("--model.ema={decay: 0.9}", "--run.name=ema", *on_device(tmp_path, "ema"))
    assert_on_device(tmp_path, "ema", 16)
    ckpt = torch.load(cli.run_dir.checkpoints / "last.ckpt", weights_only=False)
    averaged = averaged_state(ckpt)
    assert int(averaged["n_averaged"]) == 16, "the start plus 3 x 5 steps"
    for k, v in ckpt["state_dict"].items():
        if k.startswith("net."):
            assert torch.equal(averaged[f"module.{k[4:]}"], v), k
    raw = ckpt[RAW_KEY]["1.weight"]
    assert not torch.equal(raw, ckpt["state_dict"]["net.1.weight"]), "raw and averaged weights differ"
    # fit's report is the validation of best.ckpt: the averaged weights
    assert cli.result.metrics["val/acc"] > 0.5, "well above chance (0.1) after 15 steps"


def test_swa_averages_epoch_end_weights_with_batch_norm_updated(tmp_path):
    cli = fit("--model.swa={start_epoch: 1}", "--model.norm=batch", "--run.name=swa", *on_device(tmp_path, "swa"))
    assert_on_device(tmp_path, "swa", 2)
    ckpt = torch.load(cli.run_dir.checkpoints / "last.ckpt", weights_only=False)
    assert int(averaged_state(ckpt)["n_averaged"]) == 2, "epochs 1 and 2"
    state = ckpt["state_dict"]
    # the averaged net's batch-norm statistics come from a pass over the training data with it
    assert not torch.equal(state["net.2.running_mean"], ckpt[RAW_KEY]["2.running_mean"])
    assert int(state["net.2.num_batches_tracked"]) != int(ckpt[RAW_KEY]["2.num_batches_tracked"])
    assert cli.result.metrics["val/acc"] > 0.5, "well above chance (0.1) after 15 steps"


def test_swa_recipe_reports_and_tests_the_averaged_model(capsys):
    from trainkit.cli import main

    recipe = DEFAULT_RECIPE.with_name("digits_swa.yaml")
    # val/loss ranked "max": without ranking among averaged epochs only, best.ckpt would be the
    # untrained raw epoch 0; SWA averages epochs 2 and 3 (0-based)
    args = ["--config", str(recipe), "--run.name=swa", *QUIET, "--trainer.limit_train_batches=5",
            "--trainer.limit_val_batches=2"]
    assert main(["fit", *args, "--trainer.max_epochs=4", "--model.swa={start_epoch: 2}",
                 "--checkpoint.monitor=val/loss", "--checkpoint.mode=max"]) == 0
    run = Path("runs/digits_swa/swa")
    fit_metrics = json.loads((run / "metrics.json").read_text())
    assert fit_metrics["fit/best_epoch"] in (3, 4), fit_metrics
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    averaged = averaged_state(best)
    assert int(averaged["n_averaged"]) >= 1
    for k, v in best["state_dict"].items():
        if k.startswith("net.") and "running" not in k and "num_batches" not in k:
            assert torch.equal(averaged[f"module.{k[4:]}"], v), k  # the averaged weights, not the raw ones
    # and its batch-norm statistics recomputed for them (update_bn), not the training ones
    assert not torch.equal(best[RAW_KEY]["2.running_mean"], best["state_dict"]["net.2.running_mean"])
    # trainkit test (best.ckpt by default) evaluates those weights: recompute its accuracy by hand
    assert main(["test", "--config", str(recipe), "--run.name=swa", *QUIET]) == 0
    tested = json.loads((run / "metrics.json").read_text())["test/acc"]
    cli = TrainkitCLI(["test", "--config", str(recipe), "--run.name=swa", *QUIET], run_stage=False)
    net = cli.model.net
    net.load_state_dict({k[4:]: v for k, v in best["state_dict"].items() if k.startswith("net.")})
    net.eval()
    x, y = cli.datamodule.splits["test"].tensors
    with torch.no_grad():
        assert float((net(x).argmax(1) == y).float().mean()) == pytest.approx(tested, abs=1e-6)
