"""Every recipe in recipes/ loads and runs one tiny step; the shipped ones reach their targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import QUIET, RECIPES, ROOT

from trainkit.cli import main


def data_root(recipe: Path, tmp: Path) -> list[str]:
    """The recipe's data.root made to work from the test's directory: a shipped file
    (recipes/data/...) is relative to the repository; an image folder is generated."""
    data = yaml.safe_load(recipe.read_text()).get("data") or {}
    if data.get("dataset") == "image_folder":
        import cv2
        import numpy as np

        rng = np.random.default_rng(0)
        for c in ("cats", "dogs"):
            (tmp / "images" / c).mkdir(parents=True)
            for i in range(50):  # mixed sizes (the recipe's pipeline ends in its size); a training split > one batch
                cv2.imwrite(str(tmp / "images" / c / f"{i}.jpg"), rng.integers(0, 256, (40 + i % 12, 50, 3), dtype=np.uint8))
        return [f"--data.root={tmp / 'images'}"]
    root = data.get("root")
    return [f"--data.root={ROOT / root}"] if root and not Path(root).is_absolute() else []


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_runs_one_step(recipe: Path, tmp_path: Path):
    args = ["fit", "--config", str(recipe), "--trainer.fast_dev_run=true", "--data.num_workers=0", *data_root(recipe, tmp_path)]
    assert main([*args, *QUIET]) == 0


def test_breast_cancer_recipe_reaches_auroc(capsys):
    recipe = Path(__file__).parents[1] / "recipes" / "breast_cancer_mlp.yaml"
    assert main(["fit", "--config", str(recipe), "--run.name", "bc", *QUIET]) == 0
    metrics = json.loads(Path("runs/breast_cancer_mlp/bc/metrics.json").read_text())
    assert metrics["val/auroc"] >= 0.95, metrics
    assert metrics["val/acc"] >= 0.9, metrics
    assert capsys.readouterr().out.strip().splitlines()[-1] == "run dir: runs/breast_cancer_mlp/bc"
