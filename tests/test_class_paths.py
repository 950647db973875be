"""Class paths in a recipe (an optimizer, an activation, a callback, an architecture) import
from the current directory as ``python -m`` would: the ``trainkit`` console script starts with
its own directory on sys.path, not the one it runs in."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import DEFAULT_RECIPE, QUIET, trainkit

USER_CODE = '''
import json
import torch
from lightning.pytorch import Callback


class MySGD(torch.optim.SGD):
    """A user's optimizer: SGD under another name."""


class Swish(torch.nn.Module):
    def __init__(self, beta: float = 1.0):
        super().__init__()
        self.beta = beta

    def forward(self, x):
        return x * torch.sigmoid(self.beta * x)


class Record(Callback):
    """Writes what the run was built with."""

    def on_fit_end(self, trainer, pl_module):
        acts = sorted({type(m).__name__ for m in pl_module.net.modules() if type(m).__name__ in ("Swish", "ReLU")})
        with open("built.json", "w") as f:
            json.dump({"optimizer": type(trainer.optimizers[0]).__name__, "activations": acts,
                       "beta": next(m.beta for m in pl_module.net.modules() if type(m).__name__ == "Swish")}, f)
'''


def test_user_classes_import_from_the_current_directory():
    Path("mine.py").write_text(USER_CODE)
    out = trainkit("fit", "--config", str(DEFAULT_RECIPE), "--trainer.max_epochs=1", "--trainer.limit_train_batches=3",
                   "--trainer.logger=false", "--data.num_workers=0", *QUIET,
                   "--model.optimizer={name: mine.MySGD, lr: 0.05, momentum: 0.9}",
                   "--model.activation={name: mine.Swish, beta: 2.0}",
                   "--trainer.callbacks=[{class_path: mine.Record}]")
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(Path("built.json").read_text()) == {"optimizer": "MySGD", "activations": ["Swish"], "beta": 2.0}
