"""Tables from files: ``data.dataset: table``, ``data.root: FILE`` (.csv, .tsv, .parquet).

``data.dataset_args: {target: COLUMN, features: null | [columns], categorical: null | [columns]}``.
The target column's values are the classes (sorted: numerically when every value is a
number, else as text; their names are kept for predictions). Features default to every other
column; numeric ones are used as they are, ``categorical`` ones are one-hot encoded with the
categories of the *training split* (fitted by the data module once it has split the labels;
a category first seen in val/test or at prediction maps to all zeros). A missing value, a
missing column or a non-numeric column not declared categorical is refused (exit 2) naming the
column and the first bad row. CSV/TSV are read with the standard library; Parquet needs
pyarrow (``pip install pyarrow``), which is not a dependency of trainkit.

Rows are numbered from 1, the first data row after the header; for CSV/TSV the message also
gives the file's line number.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainkit.data.datasets import DATASETS, ArrayData
from trainkit.errors import ConfigError

SUFFIXES = (".csv", ".tsv", ".parquet")
MISSING = ("", "na", "nan", "null", "none", "n/a")


def read_columns(path: Path, key: str = "data.root") -> dict[str, list[Any]]:
    """The file's columns by name, values as read (text for CSV/TSV).

    Raises:
        ConfigError: not a file, another suffix, no header, a ragged row, Parquet without pyarrow.
    """
    if not path.is_file() or path.suffix.lower() not in SUFFIXES:
        raise ConfigError(f"{str(path)!r} is not a {', '.join(SUFFIXES)} file", key)
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigError(f"reading {str(path)!r} needs pyarrow (pip install pyarrow), or save it as .csv", key) from None
        try:
            return pq.read_table(path).to_pydict()
        except Exception as e:  # noqa: BLE001  (pyarrow raises its own error types)
            raise ConfigError(f"cannot read {str(path)!r}: {e}", key) from None
    with path.open(newline="") as f:
        rows = list(csv.reader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ","))
    if not rows or not rows[0]:
        raise ConfigError(f"{str(path)!r} has no header row of column names", key)
    head = [h.strip() for h in rows[0]]
    data = [r for r in rows[1:] if r]
    for n, r in enumerate(data, 1):
        if len(r) != len(head):
            raise ConfigError(f"{str(path)!r} row {n} (line {n + 1}) has {len(r)} fields, the header {len(head)}", key)
    return {name: [r[j] for r in data] for j, name in enumerate(head)}


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and v.strip().lower() in MISSING)


def _where(path: Path, row: int) -> str:
    return f"row {row}" + (f" (line {row + 1} of {path.name})" if path.suffix.lower() != ".parquet" else f" of {path.name}")


def numeric(values: list[Any], column: str, path: Path) -> np.ndarray:
    """A column as float64; raises naming the column and the first missing or non-numeric row."""
    out = np.empty(len(values), np.float64)
    for n, v in enumerate(values):
        if _is_missing(v):
            raise ConfigError(f"column {column!r} has a missing value in {_where(path, n + 1)}: fill or drop it", "data.root")
        try:
            out[n] = float(v)
        except (TypeError, ValueError):
            raise ConfigError(
                f"column {column!r} is not numeric ({_where(path, n + 1)}: {v!r}); list it in "
                "data.dataset_args.categorical to one-hot encode it", "data.dataset_args.categorical"
            ) from None
        if not math.isfinite(out[n]):
            raise ConfigError(f"column {column!r} has a non-finite value in {_where(path, n + 1)}: {v!r}", "data.root")
    return out


def text(values: list[Any], column: str, path: Path) -> np.ndarray:
    """A categorical (or target) column as strings; raises naming the first missing row."""
    for n, v in enumerate(values):
        if _is_missing(v):
            raise ConfigError(f"column {column!r} has a missing value in {_where(path, n + 1)}: fill or drop it", "data.root")
    return np.asarray([str(v).strip() for v in values])


@dataclass
class Table:
    """A table read from a file, its labels known; ``fit`` encodes it once the split is known.

    Attributes:
        path: the file.
        target: the label column.
        numeric: numeric feature columns, in order.
        categorical: categorical feature columns, in order.
        y, classes: labels and class names.
        columns: the feature columns' values (float64 or str arrays).
        categories: per categorical column, its training categories (set by ``fit``).
    """

    path: Path
    target: str
    numeric: list[str]
    categorical: list[str]
    y: np.ndarray
    classes: tuple[str, ...]
    columns: dict[str, np.ndarray]
    categories: dict[str, list[str]] = field(default_factory=dict)

    kind = "memory"
    test = None

    def fit(self, train: np.ndarray) -> ArrayData:
        """The encoded table: numeric columns, then each categorical column one-hot over the
        categories of the training rows ``train``."""
        self.categories = {c: sorted(set(self.columns[c][train].tolist())) for c in self.categorical}
        return ArrayData(self.encode(self.columns), self.y, self.classes)

    def feature_names(self) -> list[str]:
        """Names of the encoded columns (``color=red`` for one-hot ones)."""
        return self.numeric + [f"{c}={v}" for c in self.categorical for v in self.categories[c]]

    def encode(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        """Feature columns (by name) as the float32 model input; unseen categories are all zeros."""
        n = len(next(iter(columns.values()))) if columns else 0
        parts = [np.asarray(columns[c], np.float64).reshape(n, 1) for c in self.numeric]
        for c in self.categorical:
            cats = self.categories[c]
            code = {v: j for j, v in enumerate(cats)}
            onehot = np.zeros((n, len(cats)), np.float64)
            for r, v in enumerate(columns[c].tolist()):
                if v in code:
                    onehot[r, code[v]] = 1.0
            parts.append(onehot)
        return np.concatenate(parts, axis=1).astype(np.float32) if parts else np.zeros((n, 0), np.float32)

    def read_features(self, path: Path, key: str) -> dict[str, np.ndarray]:
        """The feature columns of another file (``predict --input``), checked as training data is."""
        raw = read_columns(path, key)
        missing = [c for c in self.numeric + self.categorical if c not in raw]
        if missing:
            raise ConfigError(f"{str(path)!r} lacks the feature column {missing[0]!r} (it has: {', '.join(raw)})", key)
        try:
            out = {c: numeric(raw[c], c, path) for c in self.numeric}
            out.update({c: text(raw[c], c, path) for c in self.categorical})
        except ConfigError as e:
            raise ConfigError(str(e).split(": ", 1)[1], key) from None
        return out


@DATASETS.register("table")
def table(
    root: str | None = None,
    target: str | None = None,
    features: list[str] | None = None,
    categorical: list[str] | None = None,
) -> Table:
    """A table from a .csv/.tsv/.parquet file (data.root): a target column, numeric and one-hot features.

    Args:
        root: the file.
        target: the label column.
        features: the feature columns (null: every column but the target).
        categorical: the feature columns to one-hot encode (categories of the training split).

    Raises:
        ConfigError: no file, no or an unknown target, unknown columns, missing values,
            non-numeric columns not declared categorical, fewer than two classes.
    """
    if root is None:
        raise ConfigError(f"table needs the file ({', '.join(SUFFIXES)})", "data.root")
    path = Path(root)
    cols = read_columns(path)
    names = list(cols)
    if target is None:
        raise ConfigError(f"name the label column of {path.name} (columns: {', '.join(names)})", "data.dataset_args.target")
    if target not in cols:
        raise ConfigError(f"no column {target!r} in {path.name} (columns: {', '.join(names)})", "data.dataset_args.target")
    feats = [c for c in names if c != target] if features is None else list(features)
    cats = list(categorical or [])
    for key, listed in (("data.dataset_args.features", feats), ("data.dataset_args.categorical", cats)):
        for c in listed:
            if c not in cols or c == target or (key.endswith("categorical") and c not in feats):
                what = "is the target" if c == target else "is not a column" if c not in cols else "is not among the features"
                raise ConfigError(f"{c!r} {what} of {path.name} (columns: {', '.join(names)})", key)
    if not cols[target]:
        raise ConfigError(f"{str(path)!r} has no data rows", "data.root")
    labels = text(cols[target], target, path)
    values = sorted(set(labels.tolist()))
    try:
        values.sort(key=float)  # numeric labels in numeric order (2 before 10)
    except ValueError:
        pass
    if len(values) < 2:
        raise ConfigError(f"column {target!r} holds one class ({values[0]!r}); a classifier needs two or more",
                          "data.dataset_args.target")
    code = {v: j for j, v in enumerate(values)}
    y = np.asarray([code[v] for v in labels.tolist()], np.int64)
    num = [c for c in feats if c not in cats]
    columns = {c: numeric(cols[c], c, path) for c in num}
    columns.update({c: text(cols[c], c, path) for c in cats})
    return Table(path, target, num, [c for c in feats if c in cats], y, tuple(values), columns)
