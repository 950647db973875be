"""``trainkit <stage> --help``, made for trainkit's users rather than generated for Lightning's.

LightningCLI builds the help from the Trainer's docstrings and every imported subclass: a
paragraph per Trainer argument, a claim that the default logger is TensorBoard, and trainkit's
internal callbacks (added by trainkit itself) offered as ones to add. Here the stage gets a
one-line usage, each Trainer argument its first sentence, the logger and callbacks options
say what trainkit does with them, and class lists leave trainkit's internals out.
"""

from __future__ import annotations

import re
from typing import Any

USAGE = "trainkit {stage} --config RECIPE.yaml [--key=value | --key value ...]  (trainkit {stage} --print_config: the full recipe)"

OWN_HELP = {
    "trainer.logger": (
        "Loggers. null (default): trainkit's own, the run's W&B run (offline unless you are logged in; "
        "`wandb sync` uploads it later) and <run dir>/metrics.csv; false: none; or a Logger (list)."
    ),
    "trainer.callbacks": (
        "Callbacks added to trainkit's own (best.ckpt and last.ckpt, diagnostics, progress, early stopping). "
        "A ModelCheckpoint here keeps its own files; best.ckpt, which fit reports and test loads, is always "
        "ranked by checkpoint.monitor."
    ),
    "trainer.enable_progress_bar": "Progress bar on the console (default on).",
    "trainer.enable_model_summary": "Model summary: one line on the console, the table in the run's trainkit.log.",
    "ckpt_path": (
        "fit: a checkpoint to continue from (null: run.resume decides; auto continues the run's last.ckpt). "
        "test, validate, predict: best (default), last or a path."
    ),
    "weights_only": "Load ckpt_path with torch.load(weights_only=...) (null: Lightning's default).",
    "trainer.default_root_dir": "Unused by trainkit: every run lives in its run dir (run.root, run.experiment, run.name).",
}
# subclasses trainkit adds to every run itself, or that only Lightning's internals use
HIDDEN = re.compile(r"^(trainkit\.|lightning\.pytorch\.cli\.|lightning\.Callback$|lightning\.pytorch\.loggers\.logger\.)")


def first_sentence(text: str | None) -> str | None:
    """The first sentence of a help text.

    >>> first_sentence("Stop training once this number of epochs is reached. Disabled by default (None).")
    'Stop training once this number of epochs is reached.'
    """
    if not text:
        return text
    match = re.match(r"(.+?[.!?])(\s|$)", " ".join(text.split()))
    return match.group(1) if match else text


def public_classes(extra: str) -> str:
    """``", known subclasses: a, b"`` without trainkit's internal classes (empty when none remain)."""
    prefix = ", known subclasses: "
    if not extra.startswith(prefix):
        return extra
    kept = [c for c in extra[len(prefix):].split(", ") if not HIDDEN.match(c)]
    return prefix + ", ".join(kept) if kept else ""


DESCRIPTIONS = {
    "fit": "Train; report the validation metrics of the best checkpoint (checkpoint.monitor).",
    "validate": "Evaluate a run's checkpoint on the validation split (--run.name N; its config.yaml is the recipe).",
    "test": "Evaluate a run's checkpoint on the test split (--run.name N; its config.yaml is the recipe).",
    "predict": "Class probabilities and labels of a run's checkpoint as CSV in the run dir (--run.name N).",
}


def tidy(parser: Any, stage: str) -> None:
    """Rewrite the help of one stage's parser as the module docstring says."""
    parser.usage = USAGE.format(stage=stage)
    parser.description = DESCRIPTIONS.get(stage, parser.description)
    # argparse keeps its options in `_actions`; jsonargparse builds on it and has no other way in
    for action in parser._actions:
        dest = getattr(action, "dest", "")
        if dest in OWN_HELP:
            action.help = OWN_HELP[dest]
        elif dest.startswith("trainer.") and isinstance(action.help, str):
            action.help = first_sentence(action.help)
        extra_help = getattr(action, "extra_help", None)
        if callable(extra_help):
            action.extra_help = lambda extra_help=extra_help: public_classes(extra_help())
