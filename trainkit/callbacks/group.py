"""Several callbacks behind one Lightning callback, for the per-step cost of the loop.

Lightning calls every hook of every callback it holds, overridden or not, each inside a profiler
context: six hooks a training step, a few microseconds each, per callback. trainkit's own
callbacks (NaN guard, monitors, world record, RNG state, curves, throughput) would add ~7%
to a 1.6 ms step on their dispatch alone (benchmarks/overhead.py). Grouped, Lightning dispatches
once per hook and each member gets only the hooks it overrides, in order. Checkpoints keep
their layout: each member's ``state_dict`` is stored and restored under its own state key, as
if it were a callback of its own. Find a member with :func:`find`.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, TypeVar

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

C = TypeVar("C", bound=Callback)
STATE = ("state_dict", "load_state_dict", "on_save_checkpoint", "on_load_checkpoint", "state_key")
HOOKS = tuple(n for n in dir(Callback) if (n.startswith("on_") or n in ("setup", "teardown")) and n not in STATE)


def _overrides(callback: Callback, hook: str) -> bool:
    return getattr(type(callback), hook) is not getattr(Callback, hook)


class CallbackGroup(Callback):
    """``callbacks`` dispatched as one (see the module docstring)."""

    def __init__(self, callbacks: Iterable[Callback]):
        self.callbacks = list(callbacks)
        for hook in HOOKS:
            members = [getattr(c, hook) for c in self.callbacks if _overrides(c, hook)]
            setattr(self, hook, self._dispatch(members))

    @staticmethod
    def _dispatch(members: list[Callable[..., Any]]) -> Callable[..., None]:
        if not members:
            return lambda *args, **kwargs: None
        if len(members) == 1:
            return members[0]

        def call(*args: Any, **kwargs: Any) -> None:
            for fn in members:
                fn(*args, **kwargs)

        return call

    @override
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.setdefault("callbacks", {})
        for c in self.callbacks:
            state = c.state_dict()
            if state:
                states[c.state_key] = state
        for c in self.callbacks:
            if _overrides(c, "on_save_checkpoint"):
                c.on_save_checkpoint(trainer, pl_module, checkpoint)

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        for c in self.callbacks:
            if _overrides(c, "on_load_checkpoint"):
                c.on_load_checkpoint(trainer, pl_module, checkpoint)
        states = checkpoint.get("callbacks") or {}
        for c in self.callbacks:
            if c.state_key in states:
                c.load_state_dict(states[c.state_key])


def find(trainer: pl.Trainer, cls: type[C]) -> C | None:
    """The first callback of type ``cls`` on ``trainer``, inside a :class:`CallbackGroup` too."""
    for c in trainer.callbacks:
        for member in c.callbacks if isinstance(c, CallbackGroup) else [c]:
            if isinstance(member, cls):
                return member
    return None
