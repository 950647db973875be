"""The recipe a command on an existing run works with, and what it may change.

- ``trainkit test|validate|predict|doctor --run.name N [--run.experiment E]`` without
  ``--config``: the run's own ``config.yaml`` is the recipe (:func:`with_run_recipe`).
- An evaluation rebuilds the model from the checkpoint's hyper-parameters. A recipe (given by
  ``--config`` or overrides) that disagrees with them is checked key by key
  (:func:`check_against_checkpoint`): keys that shape the network are refused (exit 2, naming
  each key and both values), evaluation settings (``model.auroc_thresholds``,
  ``model.channels_last``) apply, and training settings, which cannot change a trained
  checkpoint, are named in a warning.
- A resumed ``fit`` whose recipe differs from the run's ``config.yaml`` says what changed and
  records it (:func:`record_changes`): ``config.yaml`` becomes the recipe now in force and
  ``config_history.yaml`` lists every change with its time and checkpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from trainkit.errors import ConfigError
from trainkit.rundir import RunConfig, atomic_write_text

# model keys of Classifier, by what an evaluation of a trained checkpoint can do with them
NETWORK_KEYS = ("arch", "arch_args", "activation", "norm", "num_classes", "input_shape")
EVAL_KEYS = ("auroc_thresholds", "channels_last")
HISTORY_FILE = "config_history.yaml"


def option_value(argv: Sequence[str], key: str) -> str | None:
    """The last value of ``--key=value`` or ``--key value`` in ``argv`` (as LightningCLI reads it).

    >>> option_value(["--run.name", "a", "--run.name=b"], "run.name"), option_value(["--x=1"], "run.name")
    ('b', None)
    """
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{key}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{key}" and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def without_option(argv: Sequence[str], key: str) -> list[str]:
    """``argv`` without ``--key=value`` / ``--key value``.

    >>> without_option(["--a", "1", "--b=2", "--a=3"], "a")
    ['--b=2']
    """
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg.startswith(f"--{key}="):
            continue
        elif arg == f"--{key}":
            skip = i + 1 < len(argv)
        else:
            out.append(arg)
    return out


def has_recipe(argv: Sequence[str]) -> bool:
    return any(a in ("-c", "--config") or a.startswith("--config=") for a in argv)


def find_run(root: str, experiment: str | None, name: str) -> Path:
    """The run dir ``<root>/<experiment>/<name>``; without an experiment, the one experiment
    under ``root`` that holds a run ``name``.

    Raises:
        ConfigError: no such run, or runs of that name in several experiments.
    """
    base = Path(root)
    if experiment:
        path = base / experiment / name
        if not (path / "config.yaml").is_file():
            runs = sorted(p.name for p in (base / experiment).iterdir() if p.is_dir()) if (base / experiment).is_dir() else []
            have = f"runs in {base / experiment}: {', '.join(runs)}" if runs else f"{base / experiment} holds no runs"
            raise ConfigError(f"no run dir with a config.yaml at {str(path)!r} ({have})", "run.name")
        return path
    found = sorted(p.parent for p in base.glob(f"*/{name}/config.yaml")) if base.is_dir() else []
    if len(found) > 1:
        raise ConfigError(
            f"runs named {name!r} in several experiments ({', '.join(p.parent.name for p in found)}): "
            "choose one with --run.experiment", "run.name")
    if not found:
        runs = sorted(f"{p.parent.name}/{p.name}" for p in base.glob("*/*") if (p / "config.yaml").is_file()) if base.is_dir() else []
        have = f"runs under {base}: {', '.join(runs[:20])}" if runs else f"{base} holds no runs"
        raise ConfigError(f"no run named {name!r} ({have}); or give its recipe with --config", "run.name")
    return found[0]


def with_run_recipe(argv: Sequence[str], evaluation: bool = True) -> tuple[list[str], Path | None]:
    """``argv`` (after the stage name) with the run's ``config.yaml`` as the recipe, when it names
    a run (``--run.name``) and gives no ``--config``; and that run dir (None: ``argv`` unchanged).

    The run's location is pinned (``--run.root``, ``--run.experiment``) to where it was found;
    for an ``evaluation`` ``--ckpt_path`` starts from ``best`` (the saved recipe may name the
    checkpoint its fit started from).
    """
    argv = list(argv)
    name = option_value(argv, "run.name")
    if has_recipe(argv) or not name:
        return argv, None
    root = option_value(argv, "run.root") or RunConfig.root
    run = find_run(root, option_value(argv, "run.experiment"), name)
    pinned = [f"--run.root={root}", f"--run.experiment={run.parent.name}"]
    return ["--config", str(run / "config.yaml"), *(["--ckpt_path=best"] if evaluation else []), *argv, *pinned], run


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"a.b": leaf}`` (lists and tuples are leaves, normalized to lists).

    >>> flatten({"a": {"b": 1, "c": (2, 3)}, "d": None})
    {'a.b': 1, 'a.c': [2, 3], 'd': None}
    """
    if isinstance(tree, Mapping) and tree:
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.loads(json.dumps(tree, default=list))}


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old, new)}`` where two nested recipes differ (a missing key reads None).

    >>> differences({"t": {"max_epochs": 3}}, {"t": {"max_epochs": 5}})
    {'t.max_epochs': (3, 5)}
    """
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list, str)) else str(value)


def check_against_checkpoint(model_cfg: Mapping[str, Any], hparams: Mapping[str, Any], path: str) -> tuple[dict[str, Any], list[str]]:
    """Compare the recipe's ``model`` keys with the checkpoint's hyper-parameters.

    Returns the evaluation settings to apply over the checkpoint's (``{key: value}``) and the
    training keys that differ (they cannot change a trained checkpoint; the caller warns).

    Raises:
        ConfigError: a key that shapes the network differs, naming each key and both values.
    """
    theirs = {k: v for k, v in hparams.items() if not k.startswith("_")}
    diff = differences({k: theirs.get(k) for k in model_cfg if k in theirs}, {k: v for k, v in model_cfg.items() if k in theirs})
    top = lambda key: key.split(".", 1)[0]  # noqa: E731
    # num_classes and input_shape come from the data module (checked when it is built)
    network = {k: v for k, v in diff.items() if top(k) in NETWORK_KEYS and top(k) not in ("num_classes", "input_shape")}
    if network:
        named = "; ".join(f"model.{k}: recipe {_show(new)}, checkpoint {_show(old)}" for k, (old, new) in network.items())
        raise ConfigError(
            f"the recipe disagrees with the model in checkpoint {path!r}: {named}. An evaluation rebuilds the "
            f"checkpoint's model: drop these overrides, or give only --run.name to use the run's own config.yaml",
            "model",
        )
    settings = {top(k): model_cfg[top(k)] for k in diff if top(k) in EVAL_KEYS}
    training = sorted({f"model.{top(k)}" for k in diff if top(k) not in EVAL_KEYS + NETWORK_KEYS})
    return settings, training


def check_data_matches(hparams: Mapping[str, Any], num_classes: int, input_shape: Sequence[int], path: str) -> None:
    """Refuse data whose classes or input shape differ from what the checkpoint was trained on.

    Raises:
        ConfigError: naming both.
    """
    want = (hparams.get("num_classes"), list(hparams.get("input_shape") or []))
    have = (num_classes, list(input_shape))
    if want[0] is not None and want != have:
        raise ConfigError(
            f"checkpoint {path!r} was trained on {want[0]} classes of inputs of shape {tuple(want[1])}; "
            f"the recipe's data has {have[0]} classes of shape {tuple(have[1])}", "data")


def record_changes(run_dir: Path, new_text: str, checkpoint: str | None) -> dict[str, tuple[Any, Any]]:
    """Compare the recipe with the run's ``config.yaml``; on a change, append it to
    ``config_history.yaml`` and make ``config.yaml`` the recipe now in force.

    Returns the changes (``{key: (old, new)}``), empty when there are none.
    """
    config = run_dir / "config.yaml"
    if not config.is_file():
        return {}
    changes = differences(yaml.safe_load(config.read_text()) or {}, yaml.safe_load(new_text) or {})
    if not changes:
        return {}
    history_file = run_dir / HISTORY_FILE
    history = yaml.safe_load(history_file.read_text()) if history_file.is_file() else None
    entry = {
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "resumed_from": checkpoint,
        "changes": {k: {"from": old, "to": new} for k, (old, new) in changes.items()},
    }
    atomic_write_text(history_file, yaml.safe_dump([*(history or []), entry], sort_keys=False))
    atomic_write_text(config, new_text)
    return changes


def describe_changes(changes: Mapping[str, tuple[Any, Any]], limit: int = 8) -> str:
    """``trainer.max_epochs 3 -> 5, ...`` for the console.

    >>> describe_changes({"trainer.max_epochs": (3, 5)})
    'trainer.max_epochs 3 -> 5'
    """
    items = [f"{k} {_show(a)} -> {_show(b)}" for k, (a, b) in changes.items()]
    more = f", and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
