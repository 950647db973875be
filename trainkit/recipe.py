"""Recipe-level configuration groups, checks of a parsed recipe, and the explanation of parse errors.

``checkpoint:`` is a group of its own (not a Classifier or DataModule argument); parse errors
from jsonargparse are turned into one line that names the key and the closest valid ones.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

from trainkit.arguments import check_types
from trainkit.errors import ConfigError
from trainkit.metrics import METRIC_NAMES, STAGES


@dataclass
class CheckpointConfig:
    """Which checkpoint is "best" (the recipe's ``checkpoint:`` keys).

    Args:
        monitor: metric that ranks checkpoints, ``<train|val>/<loss|acc|precision|recall|f1|auroc>``.
        mode: ``max`` (higher is better) or ``min``.
        every_n_steps: also refresh ``last.ckpt`` every this many optimizer steps, mid-epoch
            (``null``: at epoch ends only); a resume continues with the batches not yet seen.
    """

    monitor: str = "val/acc"
    mode: str = "max"
    every_n_steps: int | None = None

    def __post_init__(self) -> None:
        valid = [f"{s}/{m}" for s in STAGES[:2] for m in METRIC_NAMES]
        if self.monitor not in valid:
            raise ConfigError(f"unknown metric {self.monitor!r} (valid: {', '.join(valid)})", "checkpoint.monitor")
        if self.mode not in ("min", "max"):
            raise ConfigError(f"must be min or max, got {self.mode!r}", "checkpoint.mode")
        if self.every_n_steps is not None and self.every_n_steps < 1:
            raise ConfigError(f"must be >= 1 or null, got {self.every_n_steps}", "checkpoint.every_n_steps")


def check_seed(seed: Any) -> None:
    """``seed_everything``: true (a random seed), false/null (unseeded) or an integer NumPy accepts.

    Raises:
        ConfigError: another value (Lightning's seed_everything would raise inside the run).
    """
    if isinstance(seed, bool) or seed is None:
        return
    if not isinstance(seed, int) or not 0 <= seed <= 2**32 - 1:
        raise ConfigError(f"must be an integer in [0, {2**32 - 1}], true (a random seed) or false, got {seed!r}",
                          "seed_everything")


def check_nulls(cfg: Any, groups: dict[str, Any]) -> None:
    """``null`` only where the class's argument allows it: jsonargparse lets a recipe's
    ``key: null`` through for any type (``data.num_workers: null`` then failed inside the run).

    Raises:
        ConfigError: naming the key and the type it needs.
    """
    for group, cls in groups.items():
        values = cfg[group].as_dict() if hasattr(cfg.get(group), "as_dict") else {}
        check_types(cls, {k: v for k, v in values.items() if v is None}, group)


def explain_parse_error(message: str, parser: Any) -> str:
    """jsonargparse's message, plus the closest valid keys for an unknown one."""
    message = message.strip()
    nested = _unknown_nested_key(message) or _wrong_type(message)
    if nested:
        return nested
    unknown = re.search(r"unrecognized arguments: --([\w.]+)|accept (?:option|nested key) '([\w.]+)'", message)
    if unknown and parser is not None:
        key = unknown.group(1) or unknown.group(2)
        known = [k for k in parser.get_defaults().keys() if k not in ("config", "__default_config__")]
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
        group = key.rsplit(".", 1)[0] + "." if "." in key else ""
        siblings = [k for k in known if k.startswith(group) and k.count(".") == key.count(".")]
        if close:
            message += f"; did you mean {' or '.join(close)}?"
        if siblings and len(siblings) <= 20:
            message += f" (valid: {', '.join(siblings)})"
    return message


def _wrong_type(message: str) -> str | None:
    """One line for a value of the wrong type, which jsonargparse reports over two to eight lines.

    >>> print(_wrong_type('''Parser key "model.dropout":
    ...   Does not validate against any of the Union subtypes
    ...   Subtypes: [<class 'float'>, <class 'NoneType'>]
    ...   Errors:
    ...     - Expected a <class 'float'>
    ...     - Expected a <class 'NoneType'>
    ...   Given value type: <class 'str'>
    ...   Given value: abc'''))
    model.dropout: expected float or null, got 'abc'
    >>> print(_wrong_type('''Parser key "data.batch_size":
    ...   Expected a <class 'int'>. Got value: abc'''))
    data.batch_size: expected int, got 'abc'
    """
    key = re.match(r'Parser key "([\w.]+)":', message)
    union = re.search(r"Subtypes: \[(.*)\]", message)
    given = re.search(r"Given value: (.*)$", message, re.M)
    single = re.fullmatch(r'Parser key "[\w.]+":\s+Expected a <class \'(\w+)\'>\. Got value: (.*)', message, re.S)
    if not key or not (single or (union and given and "- Expected a <class" in message)):
        return None  # another kind of problem (a class path, a nested key): jsonargparse's message
    if single:
        types, value = [single.group(1)], single.group(2)
    else:
        if re.search(r"^\s+- (?!Expected a <class)", message, re.M):
            return None  # some subtype failed for another reason than its type: keep the details
        types = [("null" if t == "NoneType" else t) for t in re.findall(r"<class '(\w+)'>", union.group(1))]
        value = given.group(1)
    return f"{key.group(1)}: expected {' or '.join(types)}, got {value.strip()!r}"


def _unknown_nested_key(message: str) -> str | None:
    """One line for an unknown key inside a typed group (``--early_stopping.patiance=3``), which
    jsonargparse reports as a value matching none of an Optional's types, over eight lines.

    >>> print(_unknown_nested_key('''Parser key "early_stopping":
    ...   Does not validate against any of the Union subtypes
    ...   Errors:
    ...     - Problem with given class_path 'trainkit.callbacks.early_stopping.EarlyStoppingConfig':
    ...         Option 'patiance' is not accepted'''))
    early_stopping.patiance: unknown key; did you mean early_stopping.patience? (valid: early_stopping.monitor, early_stopping.mode, early_stopping.patience, early_stopping.min_delta, early_stopping.smoothing)
    """
    group = re.search(r'Parser key "([\w.]+)"', message)
    option = re.search(r"Option '([\w.]+)' is not accepted", message)
    cls = re.search(r"class_path '([\w.]+)'", message)
    if not (group and option and cls):
        return None
    import inspect

    from trainkit.registry import import_object

    try:
        params = [p for p in inspect.signature(import_object(cls.group(1), group.group(1))).parameters if p != "self"]
    except (ConfigError, TypeError, ValueError):
        return None
    prefix = group.group(1) + "."
    key = prefix + option.group(1)
    valid = [prefix + p for p in params]
    close = [prefix + c for c in difflib.get_close_matches(option.group(1), params, n=2, cutoff=0.6)]
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"{key}: unknown key{hint} (valid: {', '.join(valid)})"

def ints_stay_ints(parser: Any) -> None:
    """Parse the Trainer's ``int | float`` arguments int first, as Lightning declares them:
    ``--trainer.limit_val_batches 1`` is one batch, ``1.0`` all of them (likewise the other
    ``limit_*_batches``, ``overfit_batches``, ``val_check_interval``).

    Lightning writes ``Optional[Union[int, float]]``, but typing caches unions by their set of
    types, and lightning.fabric's ``Optional[Union[float, int]]`` is created first: the Trainer's
    annotation *is* that float-first object, and jsonargparse, trying float first, reads 1 as
    1.0 (100%) (Lightning issue 21259). There is no public way to retype an argument that
    LightningCLI added, hence jsonargparse's ``_typehint`` of the action; a ``X | Y`` union is
    not cached, so it keeps the order.
    """
    for action in parser._actions:
        typehint = getattr(action, "_typehint", None)
        args = set(getattr(typehint, "__args__", ()) or ())
        if action.dest.startswith("trainer.") and args - {type(None)} == {int, float}:
            action._typehint = int | float | None if type(None) in args else int | float
