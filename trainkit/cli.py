"""``trainkit`` command line: dispatches to the Lightning stages or to trainkit's own commands.

Only this module is imported before a command is chosen, so ``trainkit --help`` stays quick;
torch and Lightning load when a command needs them.

Exit codes: 0 success, 2 bad input (one message naming the culprit), 1 anything else.
"""

from __future__ import annotations

import errno
import importlib
import sys
from pathlib import Path
from typing import Sequence

from trainkit.commands import COMMANDS
from trainkit.commands.common import REGISTRIES, format_table

STAGES = ("fit", "validate", "test", "predict")
DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)

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
  pack       --config R.yaml --out DIR|s3://bucket/prefix [--workers N] [overrides]: the recipe's
             splits as LitData shards; train from them with --data.dataset=streaming --data.root=DIR

Every run lives in <run.root>/<run.experiment>/<run.name>/; its log file trainkit.log
holds what the console leaves out (--verbose shows it all). See README.md for recipes.
"""


def run_stage(argv: Sequence[str]) -> int:
    from trainkit.safe_yaml import check_recipe_files

    check_recipe_files(list(argv))  # unreadable recipes and alias bombs: exit 2 before torch loads
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from trainkit.loggers import wandb_hint
    from trainkit.runner import run

    result = run(list(argv))
    if rank_zero_only.rank == 0:
        if result.metrics:
            print(format_table(result.metrics))
        for key, value in result.extra.items():
            print(f"{key}: {format_value(value)}")
        hint = wandb_hint(result.run_dir) if result.stage != "predict" else None  # predict writes a CSV only
        if hint:
            print(hint)
        print(log_line(result.run_dir))
        print(f"run dir: {result.run_dir}")
    return 0


def log_line(run_dir: Path) -> str:
    """Where the rest of the output went, and how much of it is library warnings."""
    from trainkit.console import LOG_FILE, current_run_log

    handler = current_run_log()
    n = handler.library_warnings if handler is not None else 0
    return f"log: {run_dir / LOG_FILE}" + (f" ({n} library warning{'s' if n > 1 else ''}; --verbose shows them)" if n else "")


def format_value(value: object) -> str:
    """A result entry for the console: a verdict's line, floats to 4 significant digits.

    >>> format_value(284.40339476538816), format_value({"line": "converged"}), format_value(3)
    ('284.4', 'converged', '3')
    """
    if isinstance(value, dict) and "line" in value:
        return str(value["line"])
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``trainkit`` and ``python -m trainkit``; returns the exit code.

    ``--verbose`` anywhere shows on the console what otherwise goes to the run's log file only.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    from trainkit.preemption import PREEMPTION

    # first of all: a SIGUSR1 from SLURM during start-up must not kill the task (exit 138)
    PREEMPTION.install()
    show_all = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(HELP.format(kinds=", ".join(REGISTRIES)))
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
    from trainkit.console import session
    from trainkit.errors import ConfigError, TrainingFailed

    try:
        with session(show_all or None):
            if command in STAGES:
                return run_stage(argv)
            if command in COMMANDS:
                return importlib.import_module(f"trainkit.commands.{COMMANDS[command]}").main(rest)
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
    except Exception as e:
        if isinstance(e, OSError) and e.errno in DISK_FULL:
            # not bad input and not a bug: one line, and the run dir keeps its last complete checkpoint
            where = repr(e.filename) if e.filename else "the run's files"
            print(f"trainkit: error: writing {where} failed: {e.strerror} (the disk is full or a file-size limit "
                  "is set: ulimit -f); checkpoints are written whole or not at all, so the last complete one "
                  "is kept and the run resumes from it", file=sys.stderr)
            return 1
        # a broken optional package beside trainkit's dependencies (a CUDA torchvision next to
        # the CPU torch, which torchmetrics imports): one line instead of an import traceback
        from trainkit.optional import explain_broken_dependency

        line = explain_broken_dependency(e) if during_import(e) else None
        if line is None:
            # the traceback reaches the console as it is; the run's log file keeps it as well
            import logging

            from trainkit.console import FILE_ONLY

            logging.getLogger(__name__).error("%s failed", command, exc_info=True, extra=FILE_ONLY)
            raise
        print(f"trainkit: error: {line}", file=sys.stderr)
        return 1


def during_import(error: BaseException) -> bool:
    """Whether ``error`` was raised while a module was being imported (a module's top-level
    code is on its traceback; Python hides importlib's own frames)."""
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name == "<module>":
            return True
        tb = tb.tb_next
    return False


def console() -> None:
    """Console-script wrapper: exit with :func:`main`'s code."""
    sys.exit(main())
