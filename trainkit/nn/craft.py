"""Puts the model craft together for ``Classifier``: architecture, norm, dropout, init, and the
parts that need the trainer (SyncBatchNorm, the LSUV data pass on rank 0).

Order matters: the init scheme draws the plain weights first; weight norm then reparametrizes
them (so ``w = g * v / ||v||`` starts equal to the drawn ``w``); a warm start loads last, into
the final structure, so a checkpoint of the same recipe matches key for key.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trainkit.errors import ConfigError
from trainkit.models import build_arch
from trainkit.nn import init as inits
from trainkit.nn.activations import activation_gain
from trainkit.nn.norm import apply_weight_norm, sync_batchnorm, uses_weight_norm
from trainkit.nn.regularize import check_dropout


def build_net(
    arch: str,
    num_classes: int,
    input_shape: tuple[int, ...],
    activation: Any,
    arch_args: dict[str, Any] | None,
    norm: Any,
    dropout: float | None,
    init: dict[str, Any] | None,
) -> nn.Module:
    """The architecture with the recipe's norm, dropout and init applied (see module docstring)."""
    check_dropout(dropout)
    scheme = inits.split_spec(init)[0] if init is not None else None
    if scheme is not None and (arch_args or {}).get("pretrained") not in (None, False):
        raise ConfigError("would re-draw the weights that arch_args.pretrained loads: set model.init: null", "model.init")
    net = build_arch(arch, num_classes, input_shape, activation, arch_args, norm=norm, dropout=dropout)
    if scheme is not None and scheme != "checkpoint":
        inits.init_model(net, init, activation_gain(activation))
    if uses_weight_norm(norm):
        apply_weight_norm(net)
    if scheme == "checkpoint":
        inits.init_model(net, init, 1.0)
    return net


def setup_net(net: nn.Module, trainer: Any, stage: str, init: dict[str, Any] | None, sync_bn: bool | None) -> nn.Module:
    """Trainer-time craft: SyncBatchNorm with several processes; LSUV's data pass on a fresh fit."""
    net = sync_batchnorm(net, trainer.world_size, sync_bn, trainer.strategy.root_device.type)
    if stage == "fit" and init is not None and init.get("scheme") == "lsuv" and trainer.ckpt_path is None:
        _lsuv_on_rank_zero(net, trainer, {k: v for k, v in init.items() if k != "scheme"})
    return net


def _lsuv_on_rank_zero(net: nn.Module, trainer: Any, args: dict[str, Any]) -> None:
    """LSUV on the first ``batch_size`` training samples on rank 0, then broadcast to every rank."""
    if trainer.global_rank == 0:
        if trainer.datamodule is None:
            raise ConfigError("lsuv needs a data module to draw its calibration batch from", "model.init")
        dataset = trainer.datamodule.train_dataloader().dataset
        n = min(int(args.get("batch_size", 256)), len(dataset))
        # file sources yield uint8 images, standardized on the device in training: here too
        x = trainer.datamodule.prepare_inputs(torch.stack([dataset[i][0] for i in range(n)]))
        inits.lsuv_(net, x, tol=args.get("tol", 0.02), max_iters=args.get("max_iters", 10))
    # every rank must start from rank 0's rescaled weights
    state = trainer.strategy.broadcast(net.state_dict(), src=0)
    net.load_state_dict(state)
