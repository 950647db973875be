"""``trainkit`` command line: dispatches to the Lightning stages or to trainkit's own commands.

Only this module is imported before a command is chosen, so ``trainkit --help`` stays quick;
torch and Lightning load when a command needs them.

Exit codes: 0 success, 2 bad input (one message naming the culprit), 1 anything else.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    import argparse

STAGES = ("fit", "validate", "test", "predict")

HELP = """\
usage: trainkit <command> [options]

Turns a recipe YAML file into a Lightning training run.

stages (LightningCLI; each takes --config RECIPE.yaml, dotted overrides such as
--model.optimizer.lr=0.05 or --trainer.max_epochs=3, --print_config and --help):
  fit        train; reports the validation metrics of the best checkpoint
  validate   evaluate a run's checkpoint on the validation split (--run.name, --ckpt_path)
  test       evaluate a run's checkpoint on the test split (--run.name, --ckpt_path best|last|PATH)
  predict    class probabilities and labels as CSV in the run dir (--input test|train|val|FOLDER|FILE.csv)

trainkit commands:
  launch     --config R.yaml --nodes N --devices D [--torchrun | --slurm] [--dry-run] [overrides]
             print the launch plan, render the torchrun command or sbatch script, start it
  launch --sweep --config R.yaml --space S.yaml --trials N --study NAME [--workers K] [--dry-run]
             a SLURM array job: N tasks, each one trial of the shared study
  list KIND  registered names with a one-line description; KIND is one of:
             {kinds}
  lr-find    LR range test on a recipe: loss-vs-lr plot in a run dir, suggested lr
             (steepest descent, loss minimum / 10); --write OUT.yaml copies the recipe with it
  doctor     --config R.yaml [overrides]: preflight checks on the recipe's model and data
             (initial loss, overfit one batch, gradient flow, activations, data, lr); a
             PASS/WARN/FAIL table, doctor.json and doctor.png in a run dir; exit 1 on a FAIL
  preview-data --config RECIPE.yaml [overrides]
             a PNG grid of augmented training samples in a new run dir (and in W&B)
  lottery    --config R.yaml [overrides]: lottery ticket (train, prune, rewind, retrain) per
             model.prune {{sparsity, scope, rounds, rewind_epoch}}; sparsity and metrics per round
  sweep      --config R.yaml --space S.yaml --trials N [--sampler grid|random|tpe] [--metric val/acc]
             [--workers K] [--study NAME] [--refine] [--storage URL] [overrides]: Optuna search
             over recipe keys; results in <run.root>/<experiment>/sweep-<study>/

Every run lives in <run.root>/<run.experiment>/<run.name>/. See README.md for recipes.
"""


# kind for ``trainkit list`` -> (module, registry), imported only when asked for
REGISTRIES: dict[str, tuple[str, str]] = {
    "archs": ("trainkit.models", "ARCHS"),
    "activations": ("trainkit.nn.activations", "ACTIVATIONS"),
    "datasets": ("trainkit.data.datasets", "DATASETS"),
    "optimizers": ("trainkit.optim.optimizers", "OPTIMIZERS"),
    "schedules": ("trainkit.optim.schedules", "SCHEDULES"),
    "inits": ("trainkit.nn.init", "INIT_SCHEMES"),
    "norms": ("trainkit.nn.norm", "NORMS"),
    "augmentations": ("trainkit.data.augment", "AUGMENTATIONS"),
}


def _registries() -> dict[str, Callable[[], object]]:
    """Kinds for ``trainkit list``, each a function importing its registry."""
    import importlib

    def loader(module: str, attr: str) -> Callable[[], object]:
        return lambda: getattr(importlib.import_module(module), attr)

    return {kind: loader(*where) for kind, where in REGISTRIES.items()}


def cmd_list(args: Sequence[str]) -> int:
    """``trainkit list KIND [PATTERN]``: print registered names and descriptions."""
    from trainkit.errors import ConfigError

    kinds = _registries()
    if not args or args[0] in ("-h", "--help"):
        print(f"usage: trainkit list {{{','.join(kinds)}}} [GLOB]")
        return 0 if args else 2
    if args[0] not in kinds:
        raise ConfigError(f"unknown kind {args[0]!r} (known: {', '.join(kinds)})", "list")
    registry = kinds[args[0]]()
    names = registry.names(args[1] if len(args) > 1 else None)
    width = max((len(n) for n in names), default=0)
    for name in names:
        print(f"{name:<{width}}  {registry.describe(name)}")
    return 0


def cmd_launch(args: Sequence[str]) -> int:
    """``trainkit launch``: the launch plan, then torchrun or sbatch."""
    from trainkit.launch import cmd_launch as launch

    return launch(args)


def cmd_lr_find(args: Sequence[str]) -> int:
    """``trainkit lr-find --config R.yaml [--write OUT.yaml]``: LR range test (trainkit/lr_find.py)."""
    from trainkit.lr_find import cmd_lr_find as run_lr_find

    return run_lr_find(args)


def cmd_doctor(args: Sequence[str]) -> int:
    """``trainkit doctor --config R.yaml [overrides]``: preflight checks (trainkit/doctor.py)."""
    from trainkit.doctor import cmd_doctor as run_doctor

    return run_doctor(args)


def cmd_preview_data(args: Sequence[str]) -> int:
    """``trainkit preview-data --config R.yaml [overrides]``: write and log the augmentation grid."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from trainkit.data.preview import run_preview

    path = run_preview(list(args))
    if rank_zero_only.rank == 0:
        print(f"preview: {path}")
        print(f"run dir: {path.parent}")
    return 0


def cmd_lottery(args: Sequence[str]) -> int:
    """``trainkit lottery --config R.yaml [overrides]``: the lottery-ticket rounds (trainkit/lottery.py)."""
    from trainkit.lottery import cmd_lottery as run_lottery

    return run_lottery(args)


def cmd_sweep(args: Sequence[str]) -> int:
    """``trainkit sweep``: Optuna search over recipe keys (trainkit/sweep/)."""
    from trainkit.sweep.command import cmd_sweep as sweep

    return sweep(args)


COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "list": cmd_list,
    "launch": cmd_launch,
    "lr-find": cmd_lr_find,
    "doctor": cmd_doctor,
    "preview-data": cmd_preview_data,
    "lottery": cmd_lottery,
    "sweep": cmd_sweep,
}


def command_options(parser: "argparse.ArgumentParser", argv: Sequence[str]) -> tuple[Any, list[str]] | None:
    """A trainkit command's own options, and the rest (recipe and overrides) it passes on to the
    recipe parser; ``None`` after printing the help for ``-h``/``--help``."""
    argv = list(argv)
    if any(a in ("-h", "--help") for a in argv):
        parser.print_help()
        print("\nRecipe options: see `trainkit fit --help`.")
        return None
    return parser.parse_known_args(argv)


def format_table(metrics: dict[str, float]) -> str:
    """Metrics as an aligned two-column table.

    >>> print(format_table({"val/acc": 0.96, "val/loss": 0.125}))
    metric    value
    val/acc   0.9600
    val/loss  0.1250
    """
    width = max([len("metric")] + [len(k) for k in metrics])
    lines = [f"{'metric':<{width}}  value"]
    lines += [f"{k:<{width}}  {v:.4f}" for k, v in sorted(metrics.items())]
    return "\n".join(lines)


def run_stage(argv: Sequence[str]) -> int:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from trainkit.runner import run

    result = run(list(argv))
    if rank_zero_only.rank == 0:
        if result.metrics:
            print(format_table(result.metrics))
        for key, value in result.extra.items():
            print(f"{key}: {value['line'] if isinstance(value, dict) and 'line' in value else value}")
        print(f"run dir: {result.run_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trainkit`` and ``python -m trainkit``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(HELP.format(kinds=", ".join(_registries())))
        return 0 if argv else 2
    if argv[0] == "--version":
        from trainkit import __version__

        print(f"trainkit {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    # A W&B service inherited from a parent process belongs to other runs: a requeued job
    # attaching to it finds its own run id "in use". Each trainkit command starts its own.
    import os

    os.environ.pop("WANDB_SERVICE", None)
    from trainkit.errors import ConfigError, TrainingFailed

    try:
        if command in STAGES:
            return run_stage(argv)
        if command in COMMANDS:
            return COMMANDS[command](rest)
        raise ConfigError(f"unknown command {command!r} (known: {', '.join((*STAGES, *COMMANDS))})")
    except ConfigError as e:
        print(f"trainkit: error: {e}", file=sys.stderr)
        return 2
    except TrainingFailed as e:  # a run that failed (not bad input): one message, exit 1
        print(f"trainkit: error: {e}", file=sys.stderr)
        return 1
    except SystemExit as e:  # jsonargparse's own exits (--help, --print_config, bad input: 2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except KeyboardInterrupt:
        return 130


def console() -> None:
    """Console-script wrapper: exit with :func:`main`'s code."""
    sys.exit(main())
