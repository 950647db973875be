"""Fine-tuning: freeze by name patterns, gradual unfreezing, discriminative learning rates.

Recipe keys (all ``model.*``)::

    freeze: ["net.1", "net.3*"]     # parameters whose name matches are frozen from the start
    unfreeze: {3: ["net.3*"], 6: ["*"]}  # epoch -> patterns made trainable again at its start
    lr_mult: {"net.1*": 0.1}        # per-group lr multipliers (first matching pattern wins)
    layer_decay: 0.7                # layer-wise lr decay: the head 1, each layer below x0.7

Names are the Classifier's parameter names (``net.<layer>.weight``, see ``--print_config`` or
``model.named_parameters()``). A pattern matches a name by glob (``fnmatch``) or as a module
prefix (``net.1`` matches ``net.1.weight`` and ``net.1.bias``). Frozen parameters stay in the
optimizer (with no gradient, optimizers skip them: no update, no decay, no momentum), so
unfreezing needs no new param group and the lr schedule covers them from the start.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any, Callable

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from typing_extensions import override

from trainkit.errors import ConfigError
from trainkit.nn.init import WEIGHTED


def matches(name: str, pattern: str) -> bool:
    """Whether parameter ``name`` matches ``pattern`` (a glob, or a module-name prefix).

    >>> matches("net.1.weight", "net.1"), matches("net.10.bias", "net.1"), matches("net.3.bias", "net.*.bias")
    (True, False, True)
    """
    return fnmatchcase(name, pattern) or name.startswith(pattern + ".")


def check_patterns(model: nn.Module, patterns: list[str], key: str) -> list[str]:
    """The patterns, each checked to match at least one parameter of ``model``.

    Raises:
        ConfigError: a pattern matching nothing (a typo would silently freeze nothing).
    """
    names = [n for n, _ in model.named_parameters()]
    for pattern in patterns:
        if not any(matches(n, pattern) for n in names):
            layers = sorted({n.rsplit(".", 1)[0] for n in names})
            raise ConfigError(f"pattern {pattern!r} matches no parameter (layers: {', '.join(layers)})", key)
    return list(patterns)


def set_trainable(model: nn.Module, patterns: list[str], trainable: bool) -> list[str]:
    """Set ``requires_grad`` of the parameters matching any pattern; returns their names."""
    hit = []
    for name, param in model.named_parameters():
        if any(matches(name, p) for p in patterns):
            param.requires_grad_(trainable)
            hit.append(name)
    return hit


def layer_depths(net: nn.Module) -> dict[str, int]:
    """Depth of each parameter of ``net`` (names relative to ``net``): the number of weighted
    (linear/conv) layers among the top-level children up to and including its own child, so a
    norm layer shares the depth of the linear/conv layer before it; the head is deepest.
    """
    depths: dict[str, int] = {}
    depth = 0
    for child_name, child in net.named_children():
        depth += sum(isinstance(m, WEIGHTED) for m in child.modules())
        for name, _ in child.named_parameters():
            depths[f"{child_name}.{name}"] = max(depth, 1)
    return depths


def lr_multiplier(model: nn.Module, lr_mult: dict[str, float] | None, layer_decay: float | None) -> Callable[[str], float] | None:
    """A function ``parameter name -> lr multiplier`` for these keys (``None`` if neither is set).

    ``lr_mult`` patterns win over ``layer_decay``; layer decay gives a parameter at depth ``d``
    of ``D`` (see :func:`layer_depths`) the multiplier ``layer_decay ** (D - d)``.
    """
    if not lr_mult and layer_decay is None:
        return None
    net = getattr(model, "net", model)
    prefix = "net." if net is not model else ""
    depths = {prefix + k: v for k, v in layer_depths(net).items()}
    deepest = max(depths.values(), default=1)

    def mult(name: str) -> float:
        for pattern, value in (lr_mult or {}).items():
            if matches(name, pattern):
                return float(value)
        if layer_decay is not None and name in depths:
            return float(layer_decay) ** (deepest - depths[name])
        return 1.0

    return mult


def check_finetune(freeze: Any, unfreeze: Any, lr_mult: Any, layer_decay: Any) -> None:
    """Validate the values of the fine-tuning keys (patterns are checked on the built model)."""
    for key, value in (("lr_mult", lr_mult or {}),):
        for pattern, m in value.items():
            if isinstance(m, bool) or not isinstance(m, (int, float)) or m < 0:
                raise ConfigError(f"multiplier of {pattern!r} must be a number >= 0, got {m!r}", f"model.{key}")
    if layer_decay is not None and not 0 < layer_decay <= 1:
        raise ConfigError(f"must be in (0, 1], got {layer_decay}", "model.layer_decay")
    for epoch in unfreeze or {}:
        if int(epoch) < 0:
            raise ConfigError(f"epochs must be >= 0, got {epoch}", "model.unfreeze")


class GradualUnfreeze(Callback):
    """Make the parameters matching ``schedule[epoch]`` trainable at the start of that epoch.

    The state is the model's ``requires_grad`` flags, re-derived from the schedule on resume.
    """

    def __init__(self, freeze: list[str], schedule: dict[int, list[str]]):
        self.freeze = list(freeze)
        self.schedule = {int(k): list(v) for k, v in schedule.items()}

    def _apply(self, pl_module: pl.LightningModule, epoch: int) -> None:
        set_trainable(pl_module, self.freeze, False)
        for at in sorted(self.schedule):
            if at <= epoch:
                set_trainable(pl_module, self.schedule[at], True)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch in self.schedule or epoch == 0 or not hasattr(self, "_started"):
            self._apply(pl_module, epoch)
            self._started = True
            if epoch in self.schedule:
                rank_zero_info(f"epoch {epoch}: unfroze {', '.join(self.schedule[epoch])}")
