"""Every recipe in recipes/ loads and runs one tiny step; the shipped ones reach their targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import QUIET, RECIPES

from trainkit.cli import main


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_runs_one_step(recipe: Path):
    assert main(["fit", "--config", str(recipe), "--trainer.fast_dev_run=true", "--data.num_workers=0", *QUIET]) == 0


def test_breast_cancer_recipe_reaches_auroc(capsys):
    recipe = Path(__file__).parents[1] / "recipes" / "breast_cancer_mlp.yaml"
    assert main(["fit", "--config", str(recipe), "--run.name", "bc", *QUIET]) == 0
    metrics = json.loads(Path("runs/breast_cancer_mlp/bc/metrics.json").read_text())
    assert metrics["val/auroc"] >= 0.95, metrics
    assert metrics["val/acc"] >= 0.9, metrics
    assert capsys.readouterr().out.strip().splitlines()[-1] == "run dir: runs/breast_cancer_mlp/bc"
