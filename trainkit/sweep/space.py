"""Search spaces over recipe keys: parsing the space file, checking its paths, sampling, refining.

A space file maps dotted recipe paths to one distribution each::

    model.optimizer.lr: {loguniform: [1.0e-4, 1.0]}
    model.dropout: {choice: [0.0, 0.2, 0.5]}
    data.batch_size: {choice: [32, 64, 128]}
    model.optimizer.momentum: {uniform: [0.8, 0.99]}
    model.arch_args.depth: {int: [1, 4]}

Each sampled value reaches the trial as a dotted override (``--model.optimizer.lr=0.001``), so a
trial is exactly ``trainkit fit`` with a few more overrides.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from trainkit.errors import ConfigError
from trainkit.safe_yaml import load_yaml

KINDS = ("choice", "uniform", "loguniform", "int")


@dataclass(frozen=True)
class Param:
    """One searched recipe path: ``kind`` is choice, uniform, loguniform or int."""

    path: str
    kind: str
    values: tuple[Any, ...]  # the choices, or (low, high)

    def as_yaml(self) -> dict[str, list[Any]]:
        return {self.kind: list(self.values)}

    def grid(self) -> list[Any]:
        """The values a grid search visits.

        Raises:
            ConfigError: a continuous range (a grid needs a finite list).
        """
        if self.kind == "choice":
            return list(self.values)
        if self.kind == "int":
            return list(range(self.values[0], self.values[1] + 1))
        raise ConfigError(
            f"a grid needs a finite list: use choice or int, or --sampler random|tpe for {self.kind}", self.path
        )

    def suggest(self, trial: Any, grid: bool = False) -> Any:
        """Draw this parameter's value for an Optuna trial (categorical under a grid sampler)."""
        if grid or self.kind == "choice":
            return trial.suggest_categorical(self.path, self.grid())
        if self.kind == "int":
            return trial.suggest_int(self.path, *self.values)
        return trial.suggest_float(self.path, *self.values, log=self.kind == "loguniform")


def parse_space(raw: Any, source: str = "space") -> list[Param]:
    """Parameters of a space mapping, in file order.

    >>> parse_space({"model.optimizer.lr": {"loguniform": [1.0e-4, 1.0]}, "data.batch_size": {"choice": [32, 64]}})
    [Param(path='model.optimizer.lr', kind='loguniform', values=(0.0001, 1.0)), Param(path='data.batch_size', kind='choice', values=(32, 64))]

    Raises:
        ConfigError: not a mapping of path -> {kind: values}, or values that do not fit the kind.
    """
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{source} must map recipe paths to {{kind: values}}, e.g. model.dropout: {{choice: [0.0, 0.5]}}", "--space")
    params = []
    for path, spec in raw.items():
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
            raise ConfigError(f"must be one of {{{': [...]}, {'.join(KINDS)}: [...]}}, got {spec!r}", str(path))
        kind, values = next(iter(spec.items()))
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{kind} needs a non-empty list, got {values!r}", str(path))
        if kind == "choice":
            bad = [v for v in values if not (v is None or isinstance(v, (str, int, float, bool)))]
            if bad:
                raise ConfigError(f"choices must be numbers, strings, booleans or null, got {bad[0]!r}", str(path))
        else:
            numeric = int if kind == "int" else (int, float)
            if len(values) != 2 or not all(isinstance(v, numeric) and not isinstance(v, bool) for v in values):
                raise ConfigError(f"{kind} needs [low, high] ({'integers' if kind == 'int' else 'numbers'}), got {values!r}", str(path))
            if values[0] > values[1] or (kind == "loguniform" and values[0] <= 0):
                raise ConfigError(f"{kind} needs {'0 < ' if kind == 'loguniform' else ''}low <= high, got {values!r}", str(path))
            if kind != "int":
                values = [float(v) for v in values]
        params.append(Param(str(path), kind, tuple(values)))
    return params


def load_space(path: str | Path) -> list[Param]:
    """:func:`parse_space` of a YAML file.

    Raises:
        ConfigError: unreadable file, bad YAML or a bad space.
    """
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read space file {str(path)!r}: {e.strerror}", "--space") from None
    raw = load_yaml(text, f"space file {str(path)!r}", "--space")
    return parse_space(raw, f"space file {str(path)!r}")


def dump_space(params: Iterable[Param]) -> str:
    return yaml.safe_dump({p.path: p.as_yaml() for p in params}, sort_keys=False, default_flow_style=None)


def check_paths(params: Iterable[Param], recipe: Mapping[str, Any], recipe_name: str) -> None:
    """Every path must be a recipe key, or a key inside a dict-valued one (``model.optimizer.lr``).

    ``recipe`` is the flat resolved recipe (dotted key -> value) as the ``fit`` parser produced it.

    >>> check_paths([Param("model.dropout", "choice", (0.0,))], {"model.dropout": 0.1}, "r.yaml")
    >>> check_paths([Param("model.optimizer.lr", "choice", (0.1,))], {"model.optimizer": {"name": "sgd"}}, "r.yaml")
    >>> check_paths([Param("model.dropuot", "choice", (0.0,))], {"model.dropout": 0.1}, "r.yaml")
    Traceback (most recent call last):
    ...
    trainkit.errors.ConfigError: model.dropuot: not a key of recipe r.yaml; did you mean model.dropout?

    Raises:
        ConfigError: naming the unknown path and the closest valid keys.
    """
    known = [k for k in recipe if k not in ("config", "__default_config__")]
    # keys holding a dict, or nothing yet (model.schedule: null): keys inside them are checked
    # when the recipe is built with the sampled values, before any trial
    dicts = [k for k in known if isinstance(recipe[k], dict) or recipe[k] is None]
    for p in params:
        if p.path in known or any(p.path.startswith(d + ".") for d in dicts):
            if isinstance(recipe.get(p.path), dict):
                raise ConfigError(f"is a group of keys; search one of its keys ({p.path}.<key>) instead", p.path)
            continue
        close = difflib.get_close_matches(p.path, known + [f"{d}.{k}" for d in dicts for k in recipe[d] or ()], n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        group = p.path.rsplit(".", 1)[0] + "." if "." in p.path else ""
        siblings = [k for k in known if k.startswith(group) and k.count(".") == p.path.count(".")]
        listing = f" (valid: {', '.join(siblings)})" if siblings and len(siblings) <= 20 and not close else ""
        raise ConfigError(f"not a key of recipe {recipe_name}{hint}{listing}", p.path)


def override(path: str, value: Any) -> str:
    """The dotted command-line override that sets ``path`` to ``value``, in YAML so types survive.

    >>> override("model.optimizer.lr", 1e-05), override("model.activation", "tanh"), override("data.x", None)
    ('--model.optimizer.lr=1.0e-05', '--model.activation=tanh', '--data.x=null')
    """
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    text = text.removesuffix("...").strip()
    return f"--{path}={text}"


def edges(param: Param) -> list[tuple[Any, str]]:
    """The values of ``param`` a check must build before any trial, each with how to name it:
    both ends of a range (the constraints recipes put on a value are bounds, so a range whose
    ends build builds everywhere in between), every choice.

    >>> edges(Param("model.dropout", "uniform", (0.0, 1.5)))
    [(0.0, 'low end of uniform [0.0, 1.5]'), (1.5, 'high end of uniform [0.0, 1.5]')]
    >>> edges(Param("a", "choice", (0.1, "abc")))
    [(0.1, 'choice 1 of [0.1, abc]'), ('abc', 'choice 2 of [0.1, abc]')]
    """
    shown = "[" + ", ".join(str(v) for v in param.values) + "]"
    if param.kind == "choice":
        return [(v, f"choice {i + 1} of {shown}") for i, v in enumerate(param.values)]
    low, high = param.values
    return [(low, f"low end of {param.kind} {shown}"), (high, f"high end of {param.kind} {shown}")]


def check_builds(params: list[Param]) -> list[list[tuple[Param, Any, str]]]:
    """The recipes to build before any trial so that every value of :func:`edges` is built once:
    build ``i`` sets each parameter to its ``i``-th edge (its last one when it has fewer), so a
    space costs as many builds as its longest list, not one per value.

    >>> [[(p.path, v) for p, v, _ in b] for b in check_builds([Param("a", "choice", (1, 2, 3)), Param("b", "int", (0, 4))])]
    [[('a', 1), ('b', 0)], [('a', 2), ('b', 4)], [('a', 3), ('b', 4)]]
    """
    per_param = [edges(p) for p in params]
    n = max((len(e) for e in per_param), default=0)
    return [[(p, *e[min(i, len(e) - 1)]) for p, e in zip(params, per_param)] for i in range(n)]


def refine(params: list[Param], top: list[Mapping[str, Any]]) -> list[Param]:
    """A narrower space around the parameter values of the best trials (coarse to fine).

    Ranges shrink to the span of the top trials' values, padded by half that span on each side
    (in log space for ``loguniform``; a tenth of the old range when the top trials agree) and
    clipped to the old range. Float choices become a range between the neighbours of the best
    values (a coarse lr grid turns into a log-uniform range around its winner); other choices
    keep only the values that the top trials used.

    >>> lr = Param("lr", "choice", (1e-3, 1e-2, 1e-1, 1.0))
    >>> refine([lr], [{"lr": 1e-2}])
    [Param(path='lr', kind='loguniform', values=(0.001, 0.1))]
    >>> refine([Param("d", "uniform", (0.0, 1.0))], [{"d": 0.2}, {"d": 0.4}])
    [Param(path='d', kind='uniform', values=(0.1, 0.5))]
    >>> refine([Param("b", "choice", (32, 64, 128))], [{"b": 64}])
    [Param(path='b', kind='choice', values=(64,))]

    Raises:
        ConfigError: no top trials to refine around.
    """
    if not top:
        raise ConfigError("the study has no complete trial to refine around", "--refine")
    out = []
    for p in params:
        seen = [t[p.path] for t in top if p.path in t]
        if not seen:
            out.append(p)
        elif p.kind == "choice" and all(isinstance(v, float) for v in p.values) and len(p.values) > 1:
            ordered = sorted(p.values)
            lo_i, hi_i = ordered.index(min(seen)), ordered.index(max(seen))
            lo, hi = ordered[max(lo_i - 1, 0)], ordered[min(hi_i + 1, len(ordered) - 1)]
            log = lo > 0 and hi / lo >= 10
            out.append(Param(p.path, "loguniform" if log else "uniform", (lo, hi)))
        elif p.kind == "choice":
            out.append(Param(p.path, "choice", tuple(v for v in p.values if v in seen)))
        else:
            out.append(Param(p.path, p.kind, _narrow(p, min(seen), max(seen))))
    return out


def _narrow(p: Param, lo: float, hi: float) -> tuple[Any, Any]:
    log = p.kind == "loguniform"
    f = math.log if log else float
    a, b, lo, hi = f(p.values[0]), f(p.values[1]), f(lo), f(hi)
    pad = (hi - lo) / 2 if hi > lo else (b - a) / 10
    lo, hi = max(a, lo - pad), min(b, hi + pad)
    if log:
        return math.exp(lo), math.exp(hi)
    if p.kind == "int":
        return math.floor(lo), math.ceil(hi)
    return lo, hi
