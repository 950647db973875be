"""Seeded stratified splits and k-fold folds: index arrays over a source's labels (no input is read)."""

from __future__ import annotations

from typing import Any

import numpy as np

from trainkit.errors import ConfigError

SPLITS = ("train", "val", "test")


def stratified_split(
    y: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Seeded stratified train/val/test indices.

    Each class is shuffled and cut so that its count in every split is within one sample of
    its exact share (largest-remainder rounding per class, ties broken at random so that the
    split sizes do not drift towards one split). scikit-learn's two-stage ``train_test_split``
    does not promise that.

    >>> idx = stratified_split(np.repeat([0, 1], 50), 0.2, 0.2, seed=0)
    >>> [len(idx[s]) for s in ("train", "val", "test")]
    [60, 20, 20]
    """
    rng = np.random.default_rng(seed)
    fractions = np.array([1.0 - val_fraction - test_fraction, val_fraction, test_fraction])
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        share = len(members) * fractions
        counts = np.floor(share).astype(int)
        remainder = share - counts
        # hand the leftover samples to the splits with the largest remainders (random ties)
        order = np.lexsort((rng.random(3), -remainder))
        counts[order[: len(members) - counts.sum()]] += 1
        for split, piece in zip(SPLITS, np.split(members, np.cumsum(counts)[:-1])):
            parts[split].append(piece)
    return {s: np.sort(np.concatenate(parts[s])) for s in SPLITS}


def kfold_split(y: np.ndarray, test_fraction: float, folds: int, fold: int, seed: int) -> dict[str, np.ndarray]:
    """Stratified k-fold: a held-out test split, then fold ``fold`` of the rest is val, the others train.

    >>> idx = kfold_split(np.repeat([0, 1], 50), 0.2, folds=4, fold=1, seed=0)
    >>> [len(idx[s]) for s in ("train", "val", "test")]
    [60, 20, 20]
    """
    from sklearn.model_selection import StratifiedKFold

    outer = stratified_split(y, 0.0, test_fraction, seed)
    rest = outer["train"]
    try:
        cuts = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(rest, y[rest]))
    except ValueError as e:  # e.g. fewer members in a class than folds
        raise ConfigError(str(e), "data.folds") from None
    train, val = cuts[fold]
    return {"train": np.sort(rest[train]), "val": np.sort(rest[val]), "test": outer["test"]}


def check_labels(data: Any, name: str) -> None:
    """Labels must be integers in ``[0, len(classes))``, in every part of the dataset."""
    for part in (data, data.test):
        if part is None:
            continue
        y = np.asarray(part.y)
        n = len(part.x) if hasattr(part, "x") else len(y)
        if len(y) != n:
            raise ConfigError(f"{name}: {n} inputs but {len(y)} labels", "data.dataset")
        bad = y[(y < 0) | (y >= len(data.classes))] if np.issubdtype(y.dtype, np.integer) else y
        if len(bad):
            raise ConfigError(
                f"{name}: label {bad[0].item()!r} is out of range; labels must be integers in [0, {len(data.classes)})",
                "data.dataset",
            )

def check_inputs(data: Any, name: str, key: str) -> None:
    """At least two classes with samples, and finite inputs (where they are in memory)."""
    present = np.unique(data.y) if len(data.y) else np.array([], dtype=np.int64)
    if len(data.classes) < 2 or len(present) < 2:
        found = ", ".join(repr(data.classes[int(c)]) for c in present[:3]) or "none"
        raise ConfigError(f"{name}: a classifier needs at least 2 classes with samples, found {len(present)} ({found})", key)
    for part, label in ((data, "input"), (data.test, "test input")):
        x = getattr(part, "x", None)
        if isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            row = int(np.argwhere(~np.isfinite(x.reshape(len(x), -1)))[0][0])
            raise ConfigError(f"{name}: {label} {row} holds NaN or infinite values (inputs must be finite)", key)
