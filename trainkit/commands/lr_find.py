"""``trainkit lr-find --config R.yaml``: the LR range test (Smith 2017).

The recipe's model, data and trainer run a short fit whose lr grows exponentially from
``--min-lr`` to ``--max-lr``; the loss-vs-lr curve is saved as ``lr_find.png`` and
``lr_find.csv`` in a run dir of its own (``<root>/<experiment>/lr-find-<time>``), and two
suggestions are printed: the lr of steepest loss descent and the loss minimum's lr / 10.
``--write OUT.yaml`` writes a copy of the recipe with ``model.optimizer.lr`` set to one of them.

Lightning's ``Tuner.lr_find`` does the sweep (it swaps in its own exponential scheduler and
restores the model afterwards); trainkit adds the recipe, run dir, plot and lr scaling: the
sweep is over the optimizer's real lr, and a recipe with ``lr_scaling`` gets that lr divided
by its scale factor, so the recipe reproduces it.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path
from typing import Any, Sequence

import yaml

from trainkit.errors import ConfigError
from trainkit.optim.lr_range import SKIP_BEGIN, suggestions, unbiased
from trainkit.safe_yaml import load_yaml

PICKS = ("steepest", "min10")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trainkit lr-find",
        description="LR range test on a recipe; other options are recipe overrides (--config R.yaml ...).",
        allow_abbrev=False,
    )
    p.add_argument("--min-lr", type=float, default=1e-6, help="first lr of the sweep (default 1e-6)")
    p.add_argument("--max-lr", type=float, default=10.0, help="last lr of the sweep (default 10)")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps of the sweep (default 100)")
    p.add_argument("--write", metavar="OUT.yaml", help="write a copy of the recipe with the suggested lr")
    p.add_argument("--pick", choices=PICKS, default="steepest", help="which suggestion --write uses")
    return p


def main(argv: Sequence[str]) -> int:
    """Run the range test; prints both suggestions and the run dir. Returns the exit code."""
    from trainkit.commands.common import command_options

    opts, rest = command_options(_parser(), argv)
    if not 0 < opts.min_lr < opts.max_lr:
        raise ConfigError(f"need 0 < --min-lr < --max-lr, got {opts.min_lr} and {opts.max_lr}", "--min-lr")
    if opts.steps < 10:
        raise ConfigError(f"needs at least 10 steps (the first 10 are skipped by the suggestion), got {opts.steps}", "--steps")
    if opts.write and Path(opts.write).exists():
        raise ConfigError(f"{opts.write!r} exists; name a new file (lr-find never overwrites)", "--write")
    if not any(a.startswith("--run.name") for a in rest):
        rest.append(f"--run.name=lr-find-{time.strftime('%Y%m%d-%H%M%S')}")
    from trainkit.runner import finish_wandb

    try:
        cli = LrFindCLI(["fit", *rest, "--run.resume=never"], opts)
    finally:
        finish_wandb()
    found = cli.found
    print(f"suggested lr: {found['steepest']:.3g} (steepest descent); {found['min10']:.3g} (loss minimum / 10)")
    if found["scale"] != 1.0:
        print(f"recipe lr (model.optimizer.lr, before lr_scaling x{found['scale']:.4g}): "
              f"{found['steepest'] / found['scale']:.3g}; {found['min10'] / found['scale']:.3g}")
    if opts.write:
        write_recipe(cli.recipe_path, Path(opts.write), found[opts.pick] / found["scale"], opts.pick)
        print(f"recipe with model.optimizer.lr from {opts.pick}: {opts.write}")
    print(f"plot: {cli.run_dir.path / 'lr_find.png'}")
    print(f"run dir: {cli.run_dir.path}")
    return 0


def write_recipe(source: str | None, out: Path, lr: float, pick: str) -> None:
    """A copy of the recipe ``source`` with ``model.optimizer.lr`` set (comments are not kept)."""
    recipe = load_yaml(Path(source).read_text(), f"recipe {source!r}") if source else {}
    optimizer = recipe.setdefault("model", {}).setdefault("optimizer", {"name": "sgd"})
    optimizer["lr"] = float(f"{lr:.3g}")
    header = f"# {source or 'defaults'} with model.optimizer.lr from `trainkit lr-find` ({pick})\n"
    out.write_text(header + yaml.safe_dump(recipe, sort_keys=False))


def save_plot(path: Path, lrs: Sequence[float], losses: Sequence[float], found: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on clusters and CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses)
    shown = [v for v in losses[SKIP_BEGIN:] if math.isfinite(v)]
    if shown:  # a diverging tail would flatten the interesting part of the curve
        ax.set_ylim(min(shown) - 0.05 * abs(min(shown)), 1.5 * shown[0])
    for key, style in (("steepest", "r--"), ("min10", "g:")):
        ax.axvline(found[key], color=style[0], linestyle=style[1:], label=f"{key}: {found[key]:.3g}")
    ax.set(xscale="log", xlabel="learning rate (effective)", ylabel="training loss (smoothed)", title="LR range test")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _cli_base() -> type:
    from trainkit.runner import TrainkitCLI

    return TrainkitCLI


class LrFindCLI(_cli_base()):  # type: ignore[misc]
    """The ``fit`` stage of :class:`~trainkit.runner.TrainkitCLI` with the sweep in place of training."""

    def __init__(self, args: list[str], opts: argparse.Namespace):
        self.opts = opts
        self.found: dict[str, float] = {}
        super().__init__(args)

    def fit(self, model: Any, datamodule: Any, **kwargs: Any) -> None:
        from lightning.pytorch.tuner import Tuner

        from trainkit.optim.scaling import check_lr_scaling, global_batch, lr_factor

        finder = Tuner(self.trainer).lr_find(
            model, datamodule=datamodule, min_lr=self.opts.min_lr, max_lr=self.opts.max_lr, num_training=self.opts.steps,
            update_attr=False,  # the suggestion goes to the recipe copy, not into this model
        )
        if finder is None:
            raise ConfigError("lr-find needs real steps: remove trainer.fast_dev_run", "trainer.fast_dev_run")
        lrs, losses = finder.results["lr"], unbiased(finder.results["loss"])
        found = suggestions(lrs, losses)
        rule, base = check_lr_scaling(model.lr_scaling)
        found["scale"] = lr_factor(rule, global_batch(self.trainer).size, base)
        self.found = found
        if self.trainer.is_global_zero:
            path = self.run_dir.path
            save_plot(path / "lr_find.png", lrs, losses, found)
            with (path / "lr_find.csv").open("w", newline="") as f:
                csv.writer(f).writerows([("lr", "loss"), *zip(lrs, losses)])
            self.run_dir.write_metrics({f"lr_find/{k}": v for k, v in found.items()})
