"""``trainkit doctor``: passes the shipped recipes, and fails planted bugs on their own check."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import DEFAULT_RECIPE, ROOT

from trainkit.cli import main
from trainkit.commands.doctor import run_doctor

FAST = ["--data.num_workers=0"]
STEPS = {"overfit_steps": 80, "sweep_steps": 60}


@pytest.fixture(autouse=True)
def one_thread():
    # tiny models: extra intra-op threads only spin against the other tests on a shared 2-core box
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def doctor(recipe, *overrides: str) -> dict[str, object]:
    checks, run_dir = run_doctor(["--config", str(recipe), *FAST, *overrides], **STEPS)
    report = json.loads((run_dir / "doctor.json").read_text())
    assert [c["name"] for c in report["checks"]] == [c.name for c in checks]
    assert (run_dir / "doctor.png").stat().st_size > 10_000
    return {c.name: c for c in checks}


@pytest.mark.parametrize("recipe", [DEFAULT_RECIPE, ROOT / "recipes" / "breast_cancer_mlp.yaml"])
def test_doctor_passes_the_shipped_recipes(recipe, capsys):
    assert main(["doctor", "--config", str(recipe), *FAST, "--overfit-steps=80", "--sweep-steps=60"]) == 0
    out = capsys.readouterr().out
    table = [line.split()[:2] for line in out.splitlines()[1:-1]]
    assert table and all(status == "PASS" for _, status in table), out
    assert out.splitlines()[-1].startswith("run dir: ")


def test_zero_init_fails_gradient_flow():
    checks = doctor(DEFAULT_RECIPE, "--model.init={scheme: zeros}")
    assert checks["gradient_flow"].status == "FAIL"
    assert "zero gradient" in checks["gradient_flow"].message and "symmetry" in checks["gradient_flow"].message
    assert checks["initial_loss"].status == "PASS"  # zero logits give exactly ln(C): this check cannot see it


def test_deep_sigmoid_with_small_init_fails_activations():
    checks = doctor(ROOT / "recipes" / "init_study.yaml", "--model.activation=sigmoid", "--model.init={scheme: normal, std: 0.01}")
    assert checks["activations"].status == "FAIL" and "vanishes" in checks["activations"].message
    assert checks["activations"].values["last_over_first"] < 1e-2


def test_huge_lr_fails_the_overfit_check_with_nan():
    checks = doctor(DEFAULT_RECIPE, "--model.optimizer.lr=100")
    assert checks["overfit_batch"].status == "FAIL" and "non-finite" in checks["overfit_batch"].message
    assert checks["lr_range"].status == "FAIL"
    assert checks["gradient_flow"].status == "PASS"  # the model itself is fine


def test_permuted_labels_fail_the_label_signal_check():
    # a net memorizes one batch of random labels and starts at ln(C): those checks cannot tell
    checks = doctor(DEFAULT_RECIPE, "--data.permute_labels=true")
    assert checks["overfit_batch"].status == "PASS" and checks["initial_loss"].status == "PASS"
    assert checks["label_signal"].status == "FAIL"
    assert checks["label_signal"].values["knn"] < 0.25  # chance is 0.10; with real labels ~0.97


def test_unstandardized_inputs_warn_and_exit_zero(capsys):
    code = main(["doctor", "--config", str(DEFAULT_RECIPE), *FAST, "--data.standardize=false", "--overfit-steps=80", "--sweep-steps=60"])
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("inputs_standardized"))
    assert line.split()[1] == "WARN" and "mean 4.8" in line, line
    assert code == (1 if " FAIL " in out else 0)


# -- planted bugs the checks above passed (issue 19) -------------------------------------------
def test_weight_decay_that_prevents_fitting_fails_regularization():
    # it raised the objective (its own L2 term), which is all the check used to ask
    checks = doctor(DEFAULT_RECIPE, "--model.optimizer.weight_decay=10")
    reg = checks["regularization"]
    assert reg.status == "FAIL" and "weight_decay 10 prevent(s) fitting even one batch" in reg.message, reg.message
    assert reg.values["cross_entropy_on"] > 0.5 * reg.values["cross_entropy_start"]
    assert checks["overfit_batch"].status == "PASS"  # the model itself fits the batch


def test_dropout_that_drowns_the_signal_fails_dropout_not_the_init():
    checks = doctor(DEFAULT_RECIPE, "--model.dropout=0.95")
    assert checks["dropout"].status == "FAIL" and "drowns the signal" in checks["dropout"].message
    # dropout's rescaling of the survivors was read as an init making confident predictions
    assert checks["initial_loss"].status == "PASS", checks["initial_loss"].message
    assert checks["overfit_batch"].status == "PASS"


def test_a_common_dropout_rate_passes_the_dropout_check():
    from trainkit import preflight as dc
    from trainkit.runner import TrainkitCLI

    cli = TrainkitCLI(["fit", "--config", str(DEFAULT_RECIPE), *FAST, "--model.dropout=0.5", "--trainer.logger=false"],
                      run_stage=False)
    torch.manual_seed(0)
    x, y = next(iter(torch.utils.data.DataLoader(cli.datamodule.splits["train"], batch_size=64, shuffle=True)))
    spec = {**cli.model.optimizer_spec, "lr": 0.1}
    off = dc.train_steps(cli.model.net, (x, y), spec, 0.1, STEPS["overfit_steps"], None, 0.0)
    check = dc.dropout_signal(cli.model.net, (x, y), spec, 0.1, STEPS["overfit_steps"], 10, off)
    assert check.status == "PASS" and check.values["cross_entropy"] < 0.1 * np.log(10), check


def test_too_little_training_data_fails_data_size():
    checks = doctor(DEFAULT_RECIPE, "--data.val_fraction=0.49", "--data.test_fraction=0.49", "--data.batch_size=16")
    size = checks["data_size"]
    assert size.status == "FAIL" and size.values["train_samples"] < 40 and size.values["fewest_per_class"] < 5, size
    assert "150,794 parameters" in size.message
    assert checks["overfit_batch"].status == "PASS" and checks["label_signal"].status == "PASS"  # they cannot see it
