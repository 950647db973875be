"""A recipe fuzzer: every leaf of every recipe in recipes/ replaced by hostile values (negative,
zero, NaN, huge, wrong type, empty, null, path traversal) must parse and build, or be refused
as bad input (ConfigError / exit 2) — never a traceback, never a hang.

Each mutation runs in this process through ``TrainkitCLI(argv, run_stage=False)``: everything a
run builds (recipe, model, optimizer and schedule checks, data module and splits, trainer) and
nothing it would train or write. The default suite mutates every distinct key once (values in
rotation); the slow variant gives every key every value.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from conftest import RECIPES, recipe_data_root

from trainkit.errors import ConfigError
from trainkit.runner import TrainkitCLI
from trainkit.safe_yaml import load_yaml

HOSTILE: list[Any] = [-1, 0, math.nan, 1e308, "abc", "", None, [], {}, "../../../../etc/passwd", True, -(2**63)]
Path_ = tuple[Any, ...]


def leaves(tree: dict, prefix: Path_ = ()) -> Iterator[Path_]:
    """Key paths of every leaf (scalars, lists, empty mappings) of a recipe."""
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, (*prefix, key))
        else:
            yield (*prefix, key)


def mutated(recipe: dict, path: Path_, value: Any) -> dict:
    out = copy.deepcopy(recipe)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def outcome(recipe: dict) -> str:
    """``built`` or ``refused``; anything else (a traceback) fails the test."""
    Path("mutant.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    try:
        TrainkitCLI(["fit", "--config", "mutant.yaml"], run_stage=False)
    except ConfigError:
        return "refused"
    except SystemExit as e:  # jsonargparse's own refusals
        assert e.code == 2, f"exit {e.code}"
        return "refused"
    return "built"


def recipes() -> dict[str, dict]:
    """The shipped recipes, their data.root usable from the test's directory."""
    out = {}
    for p in RECIPES:
        recipe = load_yaml(p.read_text(), str(p))
        root = recipe_data_root(recipe.get("data") or {}, Path("data-root"))
        if root:
            recipe["data"]["root"] = root
        out[p.stem] = recipe
    return out


def plan(every_value: bool) -> dict[str, list[tuple[Path_, Any]]]:
    """Per recipe, the mutations to try: each distinct key path where it first occurs."""
    seen: set[Path_] = set()
    out: dict[str, list[tuple[Path_, Any]]] = {}
    n = 0
    for name, recipe in recipes().items():
        out[name] = []
        for path in leaves(recipe):
            if path in seen:
                continue
            seen.add(path)
            values = HOSTILE if every_value else [HOSTILE[n % len(HOSTILE)]]
            n += 1
            out[name] += [(path, v) for v in values]
    return out


def check(name: str, mutations: list[tuple[Path_, Any]]) -> None:
    recipe = recipes()[name]
    assert outcome(recipe) == "built", f"{name} as shipped must build"
    failures = []
    for path, value in mutations:
        try:
            outcome(mutated(recipe, path, value))
        except Exception as e:  # noqa: BLE001  (collect them all: one report per recipe)
            failures.append(f"{'.'.join(map(str, path))}={value!r}: {type(e).__name__}: {e}")
    assert not failures, f"{len(failures)} mutations of {name} ended in a traceback:\n" + "\n".join(failures)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", [p.stem for p in RECIPES])
def test_every_key_with_a_hostile_value_builds_or_is_refused(name):
    check(name, plan(every_value=False)[name])


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("name", [p.stem for p in RECIPES])
def test_every_key_with_every_hostile_value_builds_or_is_refused(name):
    check(name, plan(every_value=True)[name])
