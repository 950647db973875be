"""``configure``: the one helper behind ``Classifier.configure_optimizers``.

It builds the optimizer by name, scales every parameter group's lr by the real global batch,
records the plan, and wraps the schedule (with warmup) for Lightning: a per-step ``LambdaLR``
for the pure schedules, torch's ``ReduceLROnPlateau`` (per epoch, on a monitored metric) for
``plateau``.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.optim.lr_scheduler import LambdaLR, LinearLR, ReduceLROnPlateau

from trainkit.arguments import call_checked, check_types
from trainkit.errors import ConfigError
from trainkit.optim.ramp import StepClock, ramped_batches
from trainkit.optim.scaling import check_lr_scaling, global_batch, plan
from trainkit.optim.schedules import SCHEDULES, with_warmup
from trainkit.registry import check_kwargs

KEY = "model.schedule"
UNITS = ("epoch", "step")
COMMON = ("name", "unit", "warmup_steps", "warmup_epochs")
PLATEAU_ARGS = ("monitor", *[p for p in inspect.signature(ReduceLROnPlateau).parameters if p != "optimizer"])


def check_schedule(spec: dict[str, Any] | None) -> dict[str, Any]:
    """Validate ``model.schedule`` now (names, arguments, values), before anything runs.

    Returns the spec with defaults filled in (``name: constant``, ``unit: epoch``).

    Raises:
        ConfigError: unknown name, unit or argument, or a bad value; the key is named.
    """
    spec = {"name": "constant", "unit": "epoch", "warmup_steps": 0, "warmup_epochs": 0, **(spec or {})}
    name = spec["name"]
    try:
        factory = SCHEDULES.get(name)
    except ConfigError as e:
        raise e.with_key(f"{KEY}.name") from None
    if spec["unit"] not in UNITS:
        raise ConfigError(f"must be epoch or step, got {spec['unit']!r}", f"{KEY}.unit")
    for key in ("warmup_steps", "warmup_epochs"):
        value = spec[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"must be a number >= 0, got {value!r}", f"{KEY}.{key}")
    args = {k: v for k, v in spec.items() if k not in COMMON}
    try:
        if name == "plateau":
            bad = [k for k in args if k not in PLATEAU_ARGS]
            if bad:
                raise ConfigError(f"schedule 'plateau' has no argument {bad[0]!r} (valid: {', '.join(PLATEAU_ARGS)})")
            _check_monitor(args.get("monitor", "val/loss"))
            torch_args = {k: v for k, v in args.items() if k != "monitor"}
            check_types(ReduceLROnPlateau, torch_args, KEY)
            dummy = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
            call_checked(ReduceLROnPlateau, torch_args, KEY, "schedule 'plateau' (torch's ReduceLROnPlateau)", args=(dummy,))
        else:
            check_kwargs(factory, args, f"schedule {name!r}")
            params = inspect.signature(factory).parameters.values()
            missing = [p.name for p in params if p.default is p.empty and p.name != "total" and p.name not in args]
            if missing:
                raise ConfigError(f"schedule {name!r} needs {', '.join(map(repr, missing))}")
            check_types(factory, args, KEY)
            # build once with a placeholder length: bad values (step_size: 0, gamma: -1) fail now
            needs_total = "total" in inspect.signature(factory).parameters and "total" not in args
            call_checked(factory, args, KEY, f"schedule {name!r}", fixed={"total": 1.0} if needs_total else None,
                         call=_factor_stays_valid)
    except ConfigError as e:
        raise e.with_key(KEY) from None
    return spec


def _factor_stays_valid(factory: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Build the schedule and evaluate it over a span of time: its factor must stay finite and
    >= 0 (a negative gamma or end_factor would give a negative lr, which torch does not refuse)."""
    factor = factory(*args, **kwargs)
    numbers = [abs(v) for v in kwargs.values() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    numbers += [abs(x) for v in kwargs.values() if isinstance(v, (list, tuple)) for x in v if isinstance(x, (int, float))]
    horizon = 2.0 * max([1.0, *numbers])
    for i in range(101):
        t = horizon * i / 100
        value = factor(t)
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"the lr factor at t={t:g} would be {value:.4g}; it must stay finite and >= 0")


def _check_monitor(monitor: str) -> None:
    from trainkit.metrics import METRIC_NAMES

    valid = [f"{s}/{m}" for s in ("val", "train") for m in METRIC_NAMES]
    if monitor not in valid:
        raise ConfigError(f"unknown metric {monitor!r} (valid: {', '.join(valid)})", f"{KEY}.monitor")


def steps_per_epoch(trainer: Any, epoch: int = 0) -> int:
    """Optimizer steps of ``epoch`` of a running trainer, from the data module's split size
    (and its batch ramp, see :mod:`trainkit.optim.ramp`).

    Not ``trainer.estimated_stepping_batches``: called from ``configure_optimizers`` it sets
    up the train loader before Lightning restores the loader's position from a checkpoint,
    and Lightning then never restores it (a mid-epoch resume would replay the epoch's first
    batches).
    """
    dm = trainer.datamodule
    if dm is None or not hasattr(dm, "train_batches"):
        trainer.estimated_stepping_batches  # noqa: B018  (sets up the train loader: num_training_batches)
        batches = trainer.num_training_batches
    else:
        batches = dm.train_batches(trainer.world_size)
        if getattr(dm, "batch_ramp", None):
            batches = ramped_batches(batches, *dm.batch_ramp, epoch)
        limit = trainer.limit_train_batches
        if isinstance(limit, int):
            batches = min(batches, limit)
        elif limit is not None and limit < 1.0:
            batches = int(batches * limit)
    return max(1, math.ceil(batches / trainer.accumulate_grad_batches))


def step_clock(trainer: Any) -> StepClock:
    """Steps <-> epochs of the run: each epoch's steps, up to a batch ramp's last milestone."""
    ramp = getattr(trainer.datamodule, "batch_ramp", None)
    return StepClock([steps_per_epoch(trainer, e) for e in range(ramp[0][-1] + 1 if ramp else 1)])


def total_steps(trainer: Any, clock: StepClock) -> float:
    """Optimizer steps of the whole run: max_steps or the steps of max_epochs epochs."""
    by_epochs = clock.steps(trainer.max_epochs) if trainer.max_epochs not in (None, -1) else math.inf
    return min(by_epochs, trainer.max_steps) if trainer.max_steps not in (None, -1) else by_epochs


def configure(
    optimizer: torch.optim.Optimizer,
    schedule_spec: dict[str, Any] | None,
    lr_scaling: dict[str, Any] | None,
    trainer: Any,
) -> Any:
    """What ``configure_optimizers`` returns for these recipe keys on this trainer.

    Args:
        optimizer: built from ``model.optimizer`` over the model's parameter groups (groups
            may carry their own lr; every group's lr is scaled and scheduled proportionally).
        schedule_spec: ``model.schedule`` (``None``: constant lr).
        lr_scaling: ``model.lr_scaling`` (``None``: no scaling).
        trainer: the running Lightning trainer (global batch, steps per epoch, loggers).
    """
    rule, base = check_lr_scaling(lr_scaling)
    batch = global_batch(trainer)
    # the recipe's lr: groups may carry multiples of it (discriminative lrs, trainkit.nn.transfer)
    lr = optimizer.defaults.get("lr", optimizer.param_groups[0]["lr"])
    scaled, line = plan(batch, lr, rule, base)
    for group in optimizer.param_groups:
        group["lr"] *= scaled / lr if lr else 1.0
    rank_zero_info(line)
    for logger in trainer.loggers:
        logger.log_hyperparams({"lr_plan": line, "global_batch": batch.size, "lr_scaled": scaled})

    spec = check_schedule(schedule_spec)
    clock = step_clock(trainer)
    warmup = int(round(spec["warmup_steps"] + clock.steps(spec["warmup_epochs"])))
    args = {k: v for k, v in spec.items() if k not in COMMON}
    if spec["name"] == "plateau":
        monitor = args.pop("monitor", "val/loss")
        args.setdefault("mode", "min" if monitor.endswith("loss") else "max")
        schedulers = [{"scheduler": ReduceLROnPlateau(optimizer, **args), "monitor": monitor, "interval": "epoch"}]
        if warmup:
            # LinearLR updates the lr multiplicatively, so it composes with the plateau's cuts
            # (a LambdaLR would overwrite them); its factor (s + 1) / (W + 1) is with_warmup's.
            linear = LinearLR(optimizer, start_factor=1 / (warmup + 1), total_iters=warmup)
            schedulers.insert(0, {"scheduler": linear, "interval": "step"})
        return [optimizer], schedulers
    if spec["name"] == "constant" and not warmup:
        return optimizer  # a scheduler stepping a constant factor costs time every step
    # the schedule's time after warmup: steps, or epochs on the run's clock (ramped epochs are shorter)
    start = clock.epochs(warmup)
    since = (lambda s: s) if spec["unit"] == "step" else (lambda s: clock.epochs(s + warmup) - start)
    factory = SCHEDULES.get(spec["name"])
    if "total" in inspect.signature(factory).parameters and "total" not in args:
        remaining = total_steps(trainer, clock) - warmup
        if not math.isfinite(remaining):
            raise ConfigError(
                f"schedule {spec['name']!r} needs the run's length: set trainer.max_steps or max_epochs, "
                f"or give the schedule a 'total' (in {spec['unit']}s, after warmup)",
                KEY,
            )
        # a warmup as long as the run (fast_dev_run) leaves the schedule one step
        args["total"] = since(max(remaining, 1))
    factor = factory(**args)
    lam = with_warmup(lambda s: factor(since(s)), warmup)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": LambdaLR(optimizer, lam), "interval": "step"}}
