"""Your own dataset by class path (data.dataset: my_pkg.data.Pets), imported from the current
directory, read per sample in the recipe's DataLoader workers; what it lacks exits 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import DEFAULT_RECIPE, QUIET

from trainkit.cli import main

PETS = '''
import numpy as np
import torch
from torch.utils.data import Dataset


class Pets(Dataset):
    """Colour images: class c is bright in channel c (uint8 HWC arrays, as from a decoder)."""

    def __init__(self, n=90, size=12):
        rng = np.random.default_rng(0)
        self.targets = [i % 3 for i in range(n)]
        self.classes = ["cat", "dog", "fish"]
        self.images = []
        for t in self.targets:
            img = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
            img[..., t] += 170
            self.images.append(img)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.images[i], self.targets[i]


class Rows(Dataset):
    """A table as float tensors."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.targets = [i % 2 for i in range(120)]
        self.classes = ["no", "yes"]
        self.x = torch.randn(120, 6, generator=g) + torch.tensor(self.targets).view(-1, 1).float() * 2

    def __len__(self):
        return 120

    def __getitem__(self, i):
        return self.x[i], self.targets[i]


class NoTargets(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return np.zeros((4, 4, 3), np.uint8), 0
'''


@pytest.fixture()
def user_module(tmp_path: Path):
    name = f"pets_{tmp_path.name.replace('-', '_')}"  # one module per test: sys.modules keeps imports
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / name / "data.py").write_text(PETS)
    yield name
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[mod]


@pytest.mark.slow  # two fits, 2 workers
def test_a_users_dataset_by_class_path_from_the_current_directory_trains(user_module):
    args = ["fit", "--config", str(DEFAULT_RECIPE), f"--data.dataset={user_module}.data.Pets", "--data.dataset_args={n: 90}",
            "--model.arch=cnn", "--model.arch_args={}", "--data.augment={train: cifar}", "--data.batch_size=16", "--trainer.max_epochs=4",
            "--run.name=pets", *QUIET]  # the recipe's 2 workers, W&B offline on
    assert main(args) == 0
    metrics = json.loads(Path("runs/digits_mlp/pets/metrics.json").read_text())
    assert metrics["val/acc"] >= 0.9, metrics
    rows = ["fit", "--config", str(DEFAULT_RECIPE), f"--data.dataset={user_module}.data.Rows", "--trainer.max_epochs=3",
            "--run.name=rows", "--trainer.logger=false", *QUIET]
    assert main(rows) == 0
    assert json.loads(Path("runs/digits_mlp/rows/metrics.json").read_text())["val/acc"] >= 0.8


@pytest.mark.parametrize("target, args, words", [
    ("NoTargets", "{}", ["data.dataset", "NoTargets", "'targets'", "'classes'"]),
    ("Pets", "{colour: 1}", ["data.dataset_args", "'colour'"]),
    ("Nowhere", "{}", ["data.dataset", "Nowhere"]),
])
def test_what_a_users_dataset_lacks_exits_2_naming_it(user_module, capsys, target, args, words):
    assert main(["fit", "--config", str(DEFAULT_RECIPE), f"--data.dataset={user_module}.data.{target}",
                 f"--data.dataset_args={args}", *QUIET]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and not Path("runs").exists()
    for word in words:
        assert word in err, err


def test_torchvision_style_datasets_where_the_vision_extra_is_present(tmp_path):
    pytest.importorskip("torchvision", reason="the vision extra (torchvision) is not installed here")
    import cv2
    import numpy as np

    for c in ("a", "b"):
        (tmp_path / "tv" / c).mkdir(parents=True)
        for i in range(10):
            cv2.imwrite(str(tmp_path / "tv" / c / f"{i}.png"), np.full((8, 8, 3), 60 + 120 * (c == "b"), np.uint8))
    assert main(["fit", "--config", str(DEFAULT_RECIPE), "--data.dataset=torchvision.datasets.ImageFolder",
                 f"--data.dataset_args={{root: {tmp_path / 'tv'}}}", "--trainer.fast_dev_run=true", *QUIET]) == 0
