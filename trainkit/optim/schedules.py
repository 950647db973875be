"""Learning-rate schedules by name, as pure functions of time.

``model.schedule: {name: cosine, unit: epoch, warmup_epochs: 1, <schedule arguments>}``.
Each registered factory returns ``factor(t)``: the lr at time ``t`` is ``lr * factor(t)``
(so every parameter group keeps its own lr ratio). ``t`` counts steps or epochs as ``unit``
says; with ``unit: epoch`` it is fractional (``step / steps_per_epoch``), so smooth schedules
move every step and step-wise ones drop on the first step of their epoch. Linear warmup
(:func:`with_warmup`) composes with any schedule; the schedule's clock starts when warmup
ends, so ``total`` and milestones count from there.

``plateau`` is the exception: it reacts to a monitored metric, so it is torch's
``ReduceLROnPlateau`` stepped once per epoch (see :mod:`trainkit.optim.configure`).

>>> f = SCHEDULES.get("step")(step_size=2, gamma=0.5)
>>> [f(t) for t in (0, 1.9, 2, 4)]
[1.0, 1.0, 0.5, 0.25]
"""

from __future__ import annotations

import math
from bisect import bisect_right
from typing import Callable, Sequence

from trainkit.errors import ConfigError
from trainkit.registry import Registry

Factor = Callable[[float], float]
SCHEDULES: Registry = Registry("schedule")


def _positive(value: float, name: str) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")


@SCHEDULES.register("constant")
def constant() -> Factor:
    """The lr as given, all run long."""
    return lambda t: 1.0


@SCHEDULES.register("step")
def step(step_size: float, gamma: float = 0.1) -> Factor:
    """Multiply by gamma every step_size: gamma ** floor(t / step_size)."""
    _positive(step_size, "step_size")
    return lambda t: gamma ** math.floor(t / step_size)


@SCHEDULES.register("multistep")
def multistep(milestones: Sequence[float], gamma: float = 0.1) -> Factor:
    """Multiply by gamma at each milestone: gamma ** (milestones passed)."""
    ms = sorted(milestones)
    return lambda t: gamma ** bisect_right(ms, t)


@SCHEDULES.register("exponential")
def exponential(gamma: float) -> Factor:
    """Exponential decay: gamma ** t."""
    _positive(gamma, "gamma")
    return lambda t: gamma**t


@SCHEDULES.register("inverse_time")
def inverse_time(k: float) -> Factor:
    """Inverse-time decay: 1 / (1 + k t)."""
    if k < 0:
        raise ConfigError(f"k must be >= 0, got {k!r}")
    return lambda t: 1.0 / (1.0 + k * t)


@SCHEDULES.register("polynomial")
def polynomial(total: float, power: float = 1.0, end_factor: float = 0.0) -> Factor:
    """Polynomial decay to end_factor at total: end + (1 - end) (1 - t/total) ** power."""
    _positive(total, "total")
    return lambda t: end_factor + (1 - end_factor) * (1 - min(t, total) / total) ** power


def _half_cosine(x: float, end_factor: float) -> float:
    return end_factor + (1 - end_factor) * 0.5 * (1 + math.cos(math.pi * x))


@SCHEDULES.register("cosine")
def cosine(total: float, end_factor: float = 0.0) -> Factor:
    """Half a cosine from lr down to lr * end_factor at total (Loshchilov & Hutter)."""
    _positive(total, "total")
    return lambda t: _half_cosine(min(t, total) / total, end_factor)


@SCHEDULES.register("cosine_restarts")
def cosine_restarts(T_0: float, T_mult: float = 1.0, end_factor: float = 0.0) -> Factor:
    """SGDR: cosine cycles restarting at T_0, T_0 + T_0 T_mult, ... (each T_mult times longer)."""
    _positive(T_0, "T_0")
    if T_mult < 1:
        raise ConfigError(f"T_mult must be >= 1, got {T_mult!r}")

    def factor(t: float) -> float:
        if T_mult == 1:
            return _half_cosine((t % T_0) / T_0, end_factor)
        period = T_0
        while t >= period:  # cycles grow geometrically: a few dozen iterations at most
            t -= period
            period *= T_mult
        return _half_cosine(t / period, end_factor)

    return factor


@SCHEDULES.register("cyclic")
def cyclic(
    step_size_up: float,
    step_size_down: float | None = None,
    mode: str = "triangular",
    min_factor: float = 0.1,
    gamma: float = 1.0,
) -> Factor:
    """Cyclical lr (Smith 2017) between lr * min_factor and lr: triangular, triangular2, exp_range."""
    _positive(step_size_up, "step_size_up")
    down = step_size_up if step_size_down is None else step_size_down
    _positive(down, "step_size_down")
    if mode not in ("triangular", "triangular2", "exp_range"):
        raise ConfigError(f"mode must be triangular, triangular2 or exp_range, got {mode!r}")
    period = step_size_up + down

    def factor(t: float) -> float:
        cycle, x = divmod(t, period)
        rise = x / step_size_up if x < step_size_up else 1 - (x - step_size_up) / down
        scale = {"triangular": 1.0, "triangular2": 0.5**cycle, "exp_range": gamma**t}[mode]
        return min_factor + (1 - min_factor) * rise * scale

    return factor


@SCHEDULES.register("onecycle")
def onecycle(total: float, pct_start: float = 0.3, div_factor: float = 25.0, final_div_factor: float = 1e4) -> Factor:
    """1cycle (Smith & Topin 2018): cosine up from lr/div_factor to lr, then down to lr/(div_factor*final_div_factor)."""
    _positive(total, "total")
    if not 0 < pct_start < 1:
        raise ConfigError(f"pct_start must be in (0, 1), got {pct_start!r}")
    start, end, peak = 1 / div_factor, 1 / (div_factor * final_div_factor), pct_start * total

    def anneal(a: float, b: float, x: float) -> float:
        return b + (a - b) * 0.5 * (1 + math.cos(math.pi * x))

    return lambda t: anneal(start, 1.0, t / peak) if t < peak else anneal(1.0, end, min(t - peak, total - peak) / (total - peak))


@SCHEDULES.register("plateau")
def plateau() -> Factor:
    """Reduce on plateau: lr * factor when the monitored val metric stops improving for patience epochs."""
    raise AssertionError("plateau is built by trainkit.optim.configure, not as a pure function")


def with_warmup(factor: Factor, warmup_steps: int) -> Callable[[int], float]:
    """Linear warmup over ``warmup_steps`` optimizer steps, then ``factor`` of the steps after it.

    Step ``s < W`` gets ``(s + 1) / (W + 1)`` of the schedule's start: near zero at step 0 and
    exactly the schedule's value at step ``W``, where its clock starts.

    >>> f = with_warmup(lambda s: 1.0, 3)
    >>> [f(s) for s in range(5)]
    [0.25, 0.5, 0.75, 1.0, 1.0]
    """
    if warmup_steps <= 0:
        return lambda s: factor(s)
    return lambda s: min(1.0, (s + 1) / (warmup_steps + 1)) * factor(max(0, s - warmup_steps))
