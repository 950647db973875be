"""Shared test set-up: every test runs in its own directory with W&B offline by default.

Runs are shrunk through recipe overrides (fewer epochs, no progress bar), never by mocks:
the training, data, distributed and W&B parts are the real ones.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import lightning.pytorch  # noqa: F401  (its log handler binds to the session's stderr, not a test's)
import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
DEFAULT_RECIPE = ROOT / "recipes" / "digits_mlp.yaml"
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]

sys.path.insert(0, str(Path(__file__).parent))  # tests/wandb_records.py


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh working dir and a home without W&B credentials (so W&B must pick offline)."""
    for var in list(os.environ):
        if var.startswith(("WANDB_", "TRAINKIT_", "SLURM_")) or var in ("NETRC", "TORCHELASTIC_RUN_ID"):
            monkeypatch.delenv(var, raising=False)
    # set and removed again at teardown: runs in this process set it for their child processes
    monkeypatch.setenv("TRAINKIT_RUN_DIR", "")
    # whatever a test's in-process runs add to the environment (WANDB_SERVICE, ...) goes with it
    saved = dict(os.environ)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for var in set(os.environ) - set(saved):
        del os.environ[var]


def recipe_data_root(data: dict, tmp: Path) -> str | None:
    """A shipped recipe's ``data.root`` made usable from a test's directory: a shipped file
    (recipes/data/...) is relative to the repository; an image folder is generated in ``tmp``
    (mixed sizes, the recipe's pipeline ends in its size; a training split > one batch)."""
    if data.get("dataset") == "image_folder":
        import cv2
        import numpy as np

        rng = np.random.default_rng(0)
        for c in ("cats", "dogs"):
            (tmp / "images" / c).mkdir(parents=True, exist_ok=True)
            for i in range(50):
                cv2.imwrite(str(tmp / "images" / c / f"{i}.jpg"), rng.integers(0, 256, (40 + i % 12, 50, 3), dtype=np.uint8))
        return str(tmp / "images")
    root = data.get("root")
    return str(ROOT / root) if root and not Path(root).is_absolute() else None


def trainkit(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real ``trainkit`` console script of this environment."""
    exe = Path(sys.executable).with_name("trainkit")
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout)


def tree_digest(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path``: proof that nothing was touched."""
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }
