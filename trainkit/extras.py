"""The ``Classifier`` keys of transfer learning, weight averaging, snapshots and pruning, put
together: validation at build time, and the callbacks they add to any trainer
(``LightningModule.configure_callbacks``), so the runner needs no change for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from trainkit.callbacks.averaging import WeightAveraging, check_averaging
from trainkit.callbacks.snapshots import Snapshots
from trainkit.nn.prune import Pruning, check_prune
from trainkit.nn.transfer import GradualUnfreeze, check_finetune, check_patterns, lr_multiplier, set_trainable


def setup_extras(module: pl.LightningModule) -> None:
    """Validate the keys on the built ``module`` (``module.hparams``) and freeze what ``freeze`` names.

    Raises:
        ConfigError: bad values, or a freeze/unfreeze/lr_mult pattern matching no parameter.
    """
    hp = module.hparams
    check_finetune(hp.freeze, hp.unfreeze, hp.lr_mult, hp.layer_decay)
    check_averaging(hp.ema, hp.swa)
    module.prune_spec = check_prune(hp.prune)
    check_patterns(module, list(hp.freeze or []), "model.freeze")
    for epoch, patterns in (hp.unfreeze or {}).items():
        check_patterns(module, list(patterns), f"model.unfreeze.{epoch}")
    check_patterns(module, list(hp.lr_mult or {}), "model.lr_mult")
    set_trainable(module, list(hp.freeze or []), False)


def optimizer_options(module: pl.LightningModule) -> dict[str, Any]:
    """``make_optimizer``'s keyword arguments for these keys (lr multipliers, frozen parameters)."""
    hp = module.hparams
    return {"lr_mult": lr_multiplier(module, hp.lr_mult, hp.layer_decay), "include_frozen": bool(hp.unfreeze)}


def extra_callbacks(module: pl.LightningModule) -> list[Callback]:
    """The callbacks the keys ask for, on the module's trainer."""
    hp, trainer = module.hparams, module.trainer
    callbacks: list[Callback] = []
    if hp.unfreeze:
        callbacks.append(GradualUnfreeze(list(hp.freeze or []), hp.unfreeze))
    if hp.ema is not None:
        callbacks.append(WeightAveraging("ema", **hp.ema))
    if hp.swa is not None:
        callbacks.append(WeightAveraging("swa", **hp.swa))
    if module.prune_spec is not None and module.prune_spec["epochs"]:
        callbacks.append(Pruning(**module.prune_spec))
    if (hp.schedule or {}).get("name") == "cosine_restarts":
        ckpt = trainer.checkpoint_callback
        dirpath = Path(ckpt.dirpath) if ckpt is not None and ckpt.dirpath else Path(trainer.default_root_dir) / "checkpoints"
        callbacks.append(Snapshots(dirpath, hp.schedule))
    return callbacks
