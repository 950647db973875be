"""Magnitude pruning with ``torch.nn.utils.prune`` (masks are buffers, so they travel in checkpoints).

``model.prune: {sparsity: 0.8, scope: global, epochs: [10]}`` prunes the weights of every
linear and conv layer by magnitude at the start of each listed epoch, reaching ``sparsity`` (the
fraction of those weights that are zero) at the last one: one epoch is one-shot pruning, several
are iterative, each removing the same fraction of the weights still alive. ``scope: global``
ranks all weights together, ``layer`` prunes each layer to the same sparsity. A pruned weight
``w = w_orig * w_mask`` stays zero while training goes on (its gradient is masked). ``epochs: []``
prunes nothing: a model loaded with masks (a lottery ticket) keeps them fixed.

Pruning changes the model, so the epochs before the last pruning epoch rank a model the run
no longer trains: at that epoch ``best.ckpt`` (and early stopping) start ranking afresh, and
``best.ckpt`` is the best *pruned* model (see :func:`restart_ranking`). Checkpoints of either
kind (with masks or dense) load into a model of either kind (:func:`match_masks`).
The lottery-ticket procedure is ``trainkit lottery`` (:mod:`trainkit.commands.lottery`).
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.nn.utils import prune
from typing_extensions import override

from trainkit.arguments import check_types
from trainkit.errors import ConfigError
from trainkit.nn.init import WEIGHTED

KEY = "model.prune"
SCOPES = ("global", "layer")
DEFAULTS: dict[str, Any] = {"sparsity": 0.5, "scope": "global", "epochs": [0], "rounds": 1, "rewind_epoch": 0}
TYPES = {"sparsity": float, "scope": str, "epochs": list[int], "rounds": int, "rewind_epoch": int}


def check_prune(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """``model.prune`` with defaults filled in (``rounds``/``rewind_epoch`` are ``trainkit lottery``'s).

    Raises:
        ConfigError: unknown key, sparsity outside [0, 1), unknown scope, bad epochs or rounds.
    """
    if spec is None:
        return None
    for key in spec:
        if key not in DEFAULTS:
            raise ConfigError(f"unknown key {key!r} (valid: {', '.join(DEFAULTS)})", KEY)
    out = {**DEFAULTS, **spec}
    check_types(TYPES, out, KEY)
    if not 0 <= out["sparsity"] < 1:
        raise ConfigError(f"must be in [0, 1), got {out['sparsity']}", f"{KEY}.sparsity")
    if out["scope"] not in SCOPES:
        raise ConfigError(f"must be one of {', '.join(SCOPES)}, got {out['scope']!r}", f"{KEY}.scope")
    if any(int(e) < 0 for e in out["epochs"]):
        raise ConfigError(f"epochs must be >= 0, got {out['epochs']}", f"{KEY}.epochs")
    if int(out["rounds"]) < 1 or int(out["rewind_epoch"]) < 0:
        raise ConfigError(f"need rounds >= 1 and rewind_epoch >= 0, got {out['rounds']}, {out['rewind_epoch']}", KEY)
    out["epochs"] = sorted(int(e) for e in out["epochs"])
    return out


def prunable(net: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(module, "weight")`` of every linear and conv layer."""
    return [(m, "weight") for m in net.modules() if isinstance(m, WEIGHTED)]


def _weight(module: nn.Module) -> Tensor:
    return module.weight_mask if hasattr(module, "weight_mask") else torch.ones_like(module.weight)


def sparsity(net: nn.Module) -> float:
    """Fraction of zero entries in the masks of the prunable weights (0 if unpruned)."""
    masks = [_weight(m) for m, _ in prunable(net)]
    total = sum(m.numel() for m in masks)
    return float(sum(int((m == 0).sum()) for m in masks)) / max(total, 1)


def step_amount(target: float, steps: int) -> float:
    """Fraction of the surviving weights each of ``steps`` equal steps removes to reach ``target``.

    >>> round(1 - (1 - step_amount(0.8, 3)) ** 3, 12)
    0.8
    """
    return 1.0 - (1.0 - target) ** (1.0 / steps)


@torch.no_grad()
def prune_to(net: nn.Module, target: float, scope: str = "global") -> float:
    """Prune ``net`` by weight magnitude until exactly ``round(target * n)`` weights are masked
    (``n``: all prunable weights for ``global``, each layer's for ``layer``); returns the sparsity.

    Already masked weights stay masked; the smallest surviving ``|w|`` go next.
    """
    params = prunable(net)
    if scope == "global":
        total = sum(m.weight.numel() for m, _ in params)
        alive = sum(int(_weight(m).sum()) for m, _ in params)
        remove = round(target * total) - (total - alive)
        if remove > 0:
            # prune's amount counts the weights still alive (a PruningContainer skips masked ones)
            prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=int(remove))
    else:
        for module, name in params:
            n, alive = module.weight.numel(), int(_weight(module).sum())
            remove = round(target * n) - (n - alive)
            if remove > 0:
                prune.l1_unstructured(module, name, amount=int(remove))
    return sparsity(net)


def attach_masks(net: nn.Module, state: dict[str, Tensor], prefix: str = "") -> int:
    """Give ``net`` the pruning reparametrization the saved ``state`` has (``*.weight_orig`` and
    ``*.weight_mask``), so ``load_state_dict(state)`` fits; returns how many layers got one."""
    count = 0
    for name, module in net.named_modules():
        key = f"{prefix}{name}.weight_mask" if name else f"{prefix}weight_mask"
        if key in state and not hasattr(module, "weight_mask"):
            prune.identity(module, "weight")
            count += 1
    return count


def match_masks(net: nn.Module, state: dict[str, Tensor], prefix: str = "") -> None:
    """Give ``net`` the layout of the saved ``state``: the pruning reparametrization where the
    state has masks, a plain ``weight`` where it has none (a dense checkpoint loaded into a
    pruned model, e.g. a best epoch from before pruning), so ``load_state_dict(state)`` fits."""
    attach_masks(net, state, prefix)
    for name, module in net.named_modules():
        key = f"{prefix}{name}." if name else prefix
        if hasattr(module, "weight_mask") and f"{key}weight_orig" not in state and f"{key}weight" in state:
            prune.remove(module, "weight")  # back to a plain parameter; its values come from the state


def restart_ranking(trainer: pl.Trainer) -> None:
    """Make the next validation's model the best so far for ``best.ckpt`` and early stopping.

    Called when pruning starts a new model: the scores of the dense epochs must not rank it.
    ModelCheckpoint keeps the path of its current best (so the next best overwrites
    ``best.ckpt`` instead of writing ``best-v1.ckpt``) with the worst possible score; these are
    its public attributes, restored from checkpoints as they are, so a resume keeps the restart.
    """
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    for cb in trainer.callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.monitor is not None:
            worst = torch.tensor(math.inf if cb.mode == "min" else -math.inf)
            cb.best_k_models = {path: worst for path in cb.best_k_models}
            cb.kth_value = worst
            if cb.best_k_models:
                cb.best_model_score = worst
        elif isinstance(cb, EarlyStopping):
            restart = getattr(cb, "restart", None)
            if restart is not None:
                restart()
            else:
                cb.wait_count = 0
                cb.best_score = torch.tensor(math.inf if cb.mode == "min" else -math.inf)


def pruned_state(net: nn.Module, masks_from: nn.Module | None = None) -> dict[str, Tensor]:
    """``net``'s state_dict, with the masks of ``masks_from`` applied to it (a lottery ticket:
    rewound weights with the trained model's masks)."""
    if masks_from is None:
        return net.state_dict()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    for (name, module), (_, trained) in zip(net.named_modules(), masks_from.named_modules()):
        if hasattr(trained, "weight_mask"):
            orig = state.pop(f"{name}.weight", None)
            state.setdefault(f"{name}.weight_orig", orig if orig is not None else module.weight_orig.clone())
            state[f"{name}.weight_mask"] = trained.weight_mask.clone()
    return state


class Pruning(Callback):
    """Magnitude pruning at the start of the listed epochs (see the module docstring)."""

    def __init__(self, sparsity: float, scope: str = "global", epochs: Iterable[int] = (0,), **_: Any):
        self.target, self.scope, self.epochs = float(sparsity), scope, sorted(int(e) for e in epochs)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch not in self.epochs:
            return
        k = self.epochs.index(epoch) + 1
        # step k of n leaves (1 - target)^(k/n) of the weights alive
        target = 1.0 - (1.0 - self.target) ** (k / len(self.epochs))
        reached = prune_to(pl_module.net, target, self.scope)
        rank_zero_info(f"epoch {epoch}: pruned to sparsity {reached:.4f}")
        if k == len(self.epochs):
            # the final pruned model is the one the run reports: rank best.ckpt among its epochs
            restart_ranking(trainer)
            rank_zero_info("best.ckpt and early stopping rank the pruned model's epochs from here on")
