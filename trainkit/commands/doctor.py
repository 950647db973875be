"""``trainkit doctor --config R.yaml [overrides]``: preflight checks before a long run.

The recipe is parsed and its model and data built exactly as ``fit`` would
(``TrainkitCLI(run_stage=False)``); then, on copies of the model and on the data module's own
splits, in seconds on a CPU:

- ``initial_loss``: cross-entropy at init ~ ln(C);
- ``overfit_batch``: with regularization off, one small batch is fit to near-zero loss;
- ``gradient_flow``: every layer gets a finite, non-zero gradient at init; units not identical;
- ``activations``: the signal std neither vanishes nor explodes through the depth; dead ReLU
  and saturated tanh/sigmoid fractions;
- ``label_balance``, ``splits_disjoint``, ``inputs_standardized``, ``shuffling``,
  ``label_signal`` (a k-NN/logistic probe beats chance on val: labels relate to inputs);
- ``dropout``: with dropout alone on, one batch still fits (the noise does not drown the signal);
- ``data_size``: enough training samples per class and per parameter;
- ``regularization``: the recipe's regularization raises the training loss over the same steps,
  and does not keep the model from fitting one batch;
- ``lr_range``: an LR range test's suggestion (:func:`trainkit.optim.lr_range.suggestions`) next to
  the recipe's lr.

It prints a PASS/WARN/FAIL table and writes ``doctor.json`` and ``doctor.png`` in a run dir
(``<root>/<experiment>/doctor-<time>``). Exit code 0 when nothing FAILs, 1 otherwise, so a
launch script can gate on ``trainkit doctor --config R.yaml && trainkit launch ...``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from itertools import islice
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from trainkit import preflight as dc
from trainkit.preflight import FAIL, PASS, WARN, Check


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trainkit doctor",
        description="Preflight checks of a recipe; other options are recipe overrides (--config R.yaml ...).",
        allow_abbrev=False,
    )
    p.add_argument("--overfit-steps", type=int, default=100, help="steps of the one-batch overfit, with and without regularization (default 100)")
    p.add_argument("--sweep-steps", type=int, default=60, help="steps of the LR range test (default 60)")
    return p


def main(argv: Sequence[str]) -> int:
    """Run the checks, print the table and the run dir; returns 0 (no FAIL) or 1."""
    from trainkit.errors import ConfigError

    from trainkit.commands.common import command_options
    from trainkit.run_recipe import with_run_recipe, without_option

    opts, rest = command_options(_parser(), argv)
    if opts.overfit_steps < 10 or opts.sweep_steps < 20:
        raise ConfigError(f"need --overfit-steps >= 10 and --sweep-steps >= 20, got {opts.overfit_steps} and {opts.sweep_steps}", "doctor")
    # `doctor --run.name N`: the checks of run N's recipe, in a doctor run dir beside it
    rest, run = with_run_recipe(rest, evaluation=False)
    if run is not None:
        rest = without_option(rest, "run.name")
    if not any(a.startswith("--run.name") for a in rest):
        rest.append(f"--run.name=doctor-{time.strftime('%Y%m%d-%H%M%S')}")
    checks, run_dir = run_doctor(rest, opts.overfit_steps, opts.sweep_steps)
    print(format_report(checks))
    print(f"run dir: {run_dir}")
    return 1 if any(c.status == FAIL for c in checks) else 0


def format_report(checks: list[Check]) -> str:
    """The PASS/WARN/FAIL table.

    >>> print(format_report([Check("shuffling", "PASS", "shuffled")]))
    check      status  explanation
    shuffling  PASS    shuffled
    """
    width = max(len("check"), *(len(c.name) for c in checks))
    lines = [f"{'check':<{width}}  status  explanation"]
    lines += [f"{c.name:<{width}}  {c.status:<6}  {c.message}" for c in checks]
    return "\n".join(lines)


def run_doctor(args: list[str], overfit_steps: int = 100, sweep_steps: int = 60) -> tuple[list[Check], Path]:
    """Build the recipe as ``fit`` would, run every check; writes doctor.json/png. Returns (checks, run dir)."""
    from trainkit.runner import TrainkitCLI
    from trainkit.stages import create_run_dir

    # no logger: the doctor writes its own files and starts no W&B run
    cli = TrainkitCLI(["fit", *args, "--run.resume=never", "--trainer.logger=false"], run_stage=False)
    model, dm = cli.model, cli.datamodule
    if dm.kind == "streaming":  # its checks read the source's splits, labels and sampler
        from trainkit.errors import ConfigError

        raise ConfigError("doctor checks a recipe's own source; run it on the recipe you packed the shards from",
                          "data.dataset")
    torch.manual_seed(0)
    num_classes = dm.num_classes
    bs = min(dm.batch_size, 128)
    # file sources: samples standardized on the host (training standardizes them on the device)
    train = dm.splits["train"] if dm.kind == "memory" else dm.eval_split("train")
    train_loader = DataLoader(train, batch_size=bs, shuffle=True, generator=torch.Generator().manual_seed(0))
    batches = list(islice(dc.cycle(train_loader), 8))
    batch = batches[0]
    net = model.net
    lr = recipe_lr(model, dm.batch_size)
    spec = dict(model.optimizer_spec)

    grads, acts, same = dc.gradients_and_activations(net, batch)
    off = dc.train_steps(net, batch, spec, lr, overfit_steps, None, 0.0)
    configured = regularizers(model, net, dm)
    # the same steps from the same weights with the recipe's regularization: its loss floor is higher
    on = dc.train_steps(net, batch, spec, lr, overfit_steps, model.regularization, model.hparams.label_smoothing) if configured else []
    sweep = lr_sweep(net, dc.cycle(train_loader), spec, model.regularization, sweep_steps)
    splits = dm.splits
    params = sum(p.numel() for p in net.parameters())
    warm = (model.hparams.init or {}).get("scheme") == "checkpoint"
    checks = [
        dc.initial_loss(net, batches[:4], num_classes),
        dc.overfit(off, num_classes, lr),
        dc.gradient_flow(grads, same),
        dc.activations(acts),
        dc.dropout_signal(net, batch, spec, lr, overfit_steps, num_classes, off),
        dc.label_balance(splits, num_classes),
        dc.splits_disjoint(splits),
        dc.data_size(splits, num_classes, params, warm),
        dc.inputs_standardized(batches),
        dc.shuffling(dm.train_dataloader()),
        dc.label_signal(splits),
        dc.regularization_wired(on, off, configured, num_classes),
        lr_range(sweep, lr),
    ]
    out = cli.run_dir.path
    create_run_dir(cli.run_dir, cli.recipe_text)
    report = {"recipe": cli.recipe_path, "run_dir": str(out), "lr": lr,
              "checks": [vars(c) for c in checks], "failed": any(c.status == FAIL for c in checks)}
    (out / "doctor.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    save_plot(out / "doctor.png", grads, acts, off, on, sweep, checks, num_classes)
    return checks, out


def recipe_lr(model: Any, batch_size: int) -> float:
    """The recipe's lr after lr scaling, as one process with the recipe's batch would train."""
    from trainkit.optim.scaling import check_lr_scaling, lr_factor

    rule, base = check_lr_scaling(model.lr_scaling)
    return float(model.optimizer_spec.get("lr", 0.1)) * lr_factor(rule, batch_size, base)


def regularizers(model: Any, net: torch.nn.Module, dm: Any) -> list[str]:
    """Names of the regularizers the recipe turns on (augmentation and mixing are not compared here)."""
    reg, spec = model.regularization, model.optimizer_spec
    found = [k for k in ("l1", "l2") if reg.get(k)]
    if spec.get("weight_decay"):
        found.append(f"weight_decay {spec['weight_decay']:g}")
    if any(isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 for m in net.modules()):
        found.append("dropout")
    if model.hparams.label_smoothing:
        found.append("label_smoothing")
    return found


def lr_sweep(net: torch.nn.Module, batches: Any, spec: dict[str, Any], regularization: dict[str, Any],
             steps: int, min_lr: float = 1e-6, max_lr: float = 10.0) -> dict[str, list[float]]:
    """An exponential LR range test on a copy of ``net`` (as Lightning's: stop when loss > 4x best)."""
    import copy

    from trainkit.nn.regularize import make_optimizer

    net = copy.deepcopy(net).train()
    optimizer = make_optimizer(net, {**spec, "lr": min_lr}, regularization)
    lrs, losses, avg, best = [], [], 0.0, math.inf
    for i, (x, y) in enumerate(islice(batches, steps)):
        lr = min_lr * (max_lr / min_lr) ** (i / (steps - 1))
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad()
        loss = F.cross_entropy(net(x), y)
        avg = 0.98 * avg + 0.02 * float(loss.detach())
        smooth = avg / (1 - 0.98 ** (i + 1))
        lrs.append(lr)
        losses.append(smooth)
        if not math.isfinite(smooth) or (i > 10 and smooth > 4 * best):
            break
        best = min(best, smooth)
        loss.backward()
        optimizer.step()
    return {"lr": lrs, "loss": losses, "steps": [steps]}


def lr_range(sweep: dict[str, list[float]], lr: float) -> Check:
    """The recipe's lr next to the range test's steepest-descent suggestion."""
    from trainkit.errors import ConfigError
    from trainkit.optim.lr_range import suggestions

    lrs, losses = sweep["lr"], sweep["loss"]
    try:
        found = suggestions(lrs, losses)
    except ConfigError:
        return Check("lr_range", WARN, f"the range test diverged too early to suggest an lr (recipe lr {lr:.3g})", {"lr": lr})
    blew_up = lrs[-1] if len(lrs) < sweep["steps"][0] else None  # the sweep stopped early: the loss blew up
    values = {"lr": lr, **found, "diverged_at": blew_up}
    msg = f"recipe lr {lr:.3g}; range test suggests {found['steepest']:.3g} (steepest), {found['min10']:.3g} (min/10)"
    if blew_up is not None and lr >= blew_up:
        return Check("lr_range", FAIL, msg + f"; the loss blows up from lr {blew_up:.3g}: lower the lr", values)
    if not found["steepest"] / 100 <= lr <= found["steepest"] * 100:
        return Check("lr_range", WARN, msg + ": more than 100x apart (`trainkit lr-find --write` for a recipe with it)", values)
    return Check("lr_range", PASS, msg, values)


def save_plot(path: Path, grads: dict[str, float], acts: dict[str, dict[str, float]], off: list[float],
              on: list[float], sweep: dict[str, list[float]], checks: list[Check], num_classes: int) -> None:
    """doctor.png: one quantity per axis, layers named, the lr suggestions marked, the verdicts."""
    import matplotlib

    matplotlib.use("Agg")  # no display on clusters and CI
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 2, figsize=(14, 13))
    by_name = {c.name: c for c in checks}
    _per_layer(axes[0, 0], grads, "weight-gradient norm", "gradient norm per layer at init (log scale)", log=True)
    _per_layer(axes[0, 1], {n: s["act_signal_std"] for n, s in acts.items()}, "signal std (over the batch)",
               "activations at init: signal std per layer (log scale)", log=True)
    kind = "dead" if any("dead" in s for s in acts.values()) else "saturated"
    _per_layer(axes[1, 0], {n: s.get(kind, 0.0) for n, s in acts.items()}, f"{kind} fraction",
               f"activations at init: {'dead ReLU units' if kind == 'dead' else 'saturated outputs'} per layer", log=False)
    ax = axes[1, 1]
    ax.plot(range(1, len(off) + 1), getattr(off, "data", off), label="regularization off: cross-entropy")
    if on:
        ax.plot(range(1, len(on) + 1), on.data if hasattr(on, "data") else on, label="regularization on: cross-entropy")
        if hasattr(on, "data") and any(a != b for a, b in zip(on, on.data)):
            ax.plot(range(1, len(on) + 1), on, color="tab:orange", linestyle=":", label="regularization on: + penalty terms")
    ax.axhline(math.log(num_classes), color="0.5", linestyle="--", linewidth=1, label=f"chance ln {num_classes}")
    ax.axhline(dc.overfit_target(num_classes), color="tab:green", linestyle="-.", linewidth=1, label="near zero (PASS below)")
    ax.set(xlabel="step", ylabel="training loss on one batch", title=f"one-batch overfit: {_status(by_name, 'overfit_batch')}")
    _log_y(ax, [v for v in [*getattr(off, "data", off), *getattr(on, "data", on)] if math.isfinite(v) and v > 0])
    ax.legend(fontsize=8)
    _lr_panel(axes[2, 0], sweep, by_name.get("lr_range"))
    _table(axes[2, 1], checks)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _status(checks: dict[str, Check], name: str) -> str:
    return checks[name].status if name in checks else "not run"


def _log_y(ax: Any, values: list[float]) -> None:
    """A log y axis over whole decades, labelled at each decade only: a range inside one decade
    otherwise gets labels like 2.44304x10^-1 on its minor ticks."""
    from matplotlib.ticker import LogLocator, NullFormatter

    ax.set_yscale("log")
    if values:
        lo, hi = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
        ax.set_ylim(10.0 ** lo, 10.0 ** max(hi, lo + 1))
    ax.yaxis.set_major_locator(LogLocator(base=10, numticks=12))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _per_layer(ax: Any, values: dict[str, float], ylabel: str, title: str, log: bool) -> None:
    """A bar per layer, named on the axis (input at the left); on a log axis, exact zeros (which
    it cannot draw) are marked at its bottom."""
    names = [f"net.{n}" for n in values] or ["(none)"]
    heights = list(values.values()) or [0.0]
    x = range(len(heights))
    ax.bar(x, heights, color="tab:blue")
    if log:
        _log_y(ax, [h for h in heights if h > 0] or [1e-3, 1.0])
        zeros = [i for i, h in enumerate(heights) if h == 0]
        if zeros:
            ax.plot(zeros, [ax.get_ylim()[0]] * len(zeros), "v", color="tab:red", markersize=7, clip_on=False,
                    label=f"exactly 0 ({len(zeros)} of {len(heights)} layers)")
            ax.legend(fontsize=8)
    else:
        ax.set_ylim(0, 1)
        if not any(heights):
            ax.text(0.5, 0.5, "0 in every layer", ha="center", va="center", transform=ax.transAxes, color="0.4")
    step = max(1, len(names) // 30)  # at most ~30 labels: every k-th layer of a deep net
    tilt = len(names) > 6
    ax.set_xticks(range(0, len(names), step), names[::step], rotation=60 if tilt else 0, ha="right" if tilt else "center",
                  fontsize=8)
    ax.set(xlabel="layer (input -> output)", ylabel=ylabel, title=title)
    ax.grid(axis="y", alpha=0.3)


def _lr_panel(ax: Any, sweep: dict[str, list[float]], check: Check | None) -> None:
    """The range test's loss against lr, with the recipe's lr and the suggestions marked."""
    lrs, losses = sweep["lr"], sweep["loss"]
    finite = [v for v in losses if math.isfinite(v)]
    ax.plot(lrs, losses, color="tab:blue", label="smoothed training loss")
    if finite:
        ax.set_ylim(min(finite) * 0.9, min(max(finite), 3 * finite[0]) * 1.1)
    values = check.values if check is not None else {}
    marks = (("lr", "recipe lr", "r", "--"), ("steepest", "steepest descent", "g", ":"),
             ("min10", "loss minimum / 10", "tab:purple", "-."), ("diverged_at", "loss blows up", "k", "-"))
    for key, label, color, style in marks:
        if values.get(key):
            ax.axvline(values[key], color=color, linestyle=style, linewidth=1.5, label=f"{label}: {values[key]:.3g}")
    ax.set_xscale("log")
    ax.set(xlabel="learning rate", ylabel="smoothed loss",
           title=f"LR range test: {check.status if check is not None else 'not run'}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _table(ax: Any, checks: list[Check]) -> None:
    """The checks and their status, coloured, as the table prints them."""
    colors = {PASS: "tab:green", WARN: "tab:orange", FAIL: "tab:red"}
    ax.axis("off")
    ax.set_title("checks")
    for i, c in enumerate(checks):
        y = 1 - (i + 0.5) / max(len(checks), 12)
        ax.text(0.0, y, c.name, fontsize=10, transform=ax.transAxes, va="center")
        ax.text(0.42, y, c.status, fontsize=10, weight="bold", color=colors.get(c.status, "k"), transform=ax.transAxes, va="center")
        message = c.message if len(c.message) <= 60 else c.message[:57] + "..."
        ax.text(0.55, y, message, fontsize=7, transform=ax.transAxes, va="center", color="0.3")
