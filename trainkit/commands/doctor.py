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
- ``regularization``: the recipe's regularization raises the training loss over the same steps;
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

    parsed = command_options(_parser(), argv)
    if parsed is None:
        return 0
    opts, rest = parsed
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
    from trainkit.runner import TrainkitCLI, create_run_dir

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
    checks = [
        dc.initial_loss(net, batches[:4], num_classes),
        dc.overfit(off, num_classes, lr),
        dc.gradient_flow(grads, same),
        dc.activations(acts),
        dc.label_balance(splits, num_classes),
        dc.splits_disjoint(splits),
        dc.inputs_standardized(batches),
        dc.shuffling(dm.train_dataloader()),
        dc.label_signal(splits),
        dc.regularization_wired(on, off, configured),
        lr_range(sweep, lr),
    ]
    out = cli.run_dir.path
    create_run_dir(cli.run_dir, cli.recipe_text)
    report = {"recipe": cli.recipe_path, "run_dir": str(out), "lr": lr,
              "checks": [vars(c) for c in checks], "failed": any(c.status == FAIL for c in checks)}
    (out / "doctor.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    save_plot(out / "doctor.png", grads, acts, off, on, sweep, lr)
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
              on: list[float], sweep: dict[str, list[float]], lr: float) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on clusters and CI
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    ax = axes[0, 0]
    ax.bar(range(len(grads)), [max(g, 1e-45) for g in grads.values()])
    ax.set(yscale="log", title="gradient norm per layer at init", xlabel="layer (input -> output)")
    ax = axes[0, 1]
    ax.plot([s["act_signal_std"] for s in acts.values()], marker="o", label="signal std")
    for key in ("dead", "saturated"):
        vals = [s[key] for s in acts.values() if key in s]
        if vals:
            ax.plot(vals, marker="x", label=f"{key} fraction")
    ax.set(yscale="symlog", title="activations at init", xlabel="activation layer (depth)")
    ax.legend()
    ax = axes[1, 0]
    ax.plot(off, label="regularization off")
    if on:
        ax.plot(on, label="regularization on")
    ax.set(yscale="log", title="one-batch overfit", xlabel="step", ylabel="training loss")
    ax.legend()
    ax = axes[1, 1]
    finite = [v for v in sweep["loss"] if math.isfinite(v)]
    ax.plot(sweep["lr"], sweep["loss"])
    if finite:
        ax.set_ylim(min(finite) * 0.9, min(max(finite), 3 * finite[0]) * 1.1)
    ax.axvline(lr, color="r", linestyle="--", label=f"recipe lr {lr:.3g}")
    ax.set(xscale="log", title="LR range test", xlabel="lr", ylabel="smoothed loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)

