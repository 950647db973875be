"""Every recipe in recipes/ loads and trains a few steps the way users run it; the shipped ones
reach their targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import QUIET, RECIPES, recipe_data_root

from trainkit.cli import main

# Two steps and two validation batches, otherwise the recipe as users run it: W&B offline and
# CSV logging on, monitors (and W&B histograms) at step 0, the recipe's DataLoader workers,
# the progress bar. (`trainer.fast_dev_run` would swap the loggers for a dummy one: W&B's
# "Too many bins" crash of the init study's histograms passed unseen that way.)
SHORT = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2"]
# the init study's documented variant: its vanishing signal makes near-constant weights and
# gradients whose W&B histograms crashed the fit at the monitor step 50; 3 epochs reach it
VARIANTS = {"init_study.yaml": [[], ["--model.init={scheme: normal, std: 0.01}", "--trainer.max_epochs=3",
                                     "--trainer.limit_train_batches=20"]]}
# 60 steps of a 30-layer MLP: over the default suite's budget per test (the histogram itself is
# tested fast in tests/test_diagnostics.py)
CASES = [pytest.param(r, v, id=r.name + ("+normal" if v else ""), marks=[pytest.mark.slow] if v else [])
         for r in RECIPES for v in VARIANTS.get(r.name, [[]])]


def data_root(recipe: Path, tmp: Path) -> list[str]:
    """``--data.root`` for the recipe run from the test's directory (conftest.recipe_data_root)."""
    root = recipe_data_root(yaml.safe_load(recipe.read_text()).get("data") or {}, tmp)
    return [f"--data.root={root}"] if root else []


@pytest.mark.parametrize("recipe, extra", CASES)
def test_recipe_trains_with_its_defaults(recipe: Path, extra: list[str], tmp_path: Path):
    args = ["fit", "--config", str(recipe), *SHORT, *extra, *data_root(recipe, tmp_path)]
    assert main([*args, "--run.name=short"]) == 0
    run = next(Path("runs").glob("*/short"))
    assert list(run.glob("wandb/offline-run-*/run-*.wandb")), "W&B offline wrote its run"
    assert "val/acc" in json.loads((run / "metrics.json").read_text())


def test_breast_cancer_recipe_reaches_auroc(capsys):
    recipe = Path(__file__).parents[1] / "recipes" / "breast_cancer_mlp.yaml"
    assert main(["fit", "--config", str(recipe), "--run.name", "bc", *QUIET]) == 0
    metrics = json.loads(Path("runs/breast_cancer_mlp/bc/metrics.json").read_text())
    assert metrics["val/auroc"] >= 0.95, metrics
    assert metrics["val/acc"] >= 0.9, metrics
    assert capsys.readouterr().out.strip().splitlines()[-1] == "run dir: runs/breast_cancer_mlp/bc"
