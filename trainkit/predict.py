"""``trainkit predict --input X``: what to predict, preprocessed as the data module does, and the CSV.

``X`` is a split of the recipe's dataset (``train``, ``val``, ``test``; the default), a folder of
image files (searched recursively, read as the dataset's images are: same channels and size;
for in-memory image sets values are rescaled to the dataset's range), or a file of features:
for a ``table`` run a ``.csv``/``.tsv``/``.parquet`` file with the training file's feature
columns *by name* (other columns, the target among them, are ignored; categories unseen in
training encode as all zeros); for other datasets a ``.csv`` of raw features, one input per
row (``prod(input shape)`` numbers; a header row is skipped). Every input then goes through
the same preprocessing as validation data: training-split statistics, whitening, eval
pipeline. Missing or non-finite values are refused (exit 2) naming the row.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from trainkit.data.datamodule import SPLITS, DataModule
from trainkit.data.samples import SourceSamples
from trainkit.errors import ConfigError

KEY = "input"


@dataclass
class PredictInput:
    """Inputs to predict: the dataset, a name per row (file or row number), labels if known."""

    name: str  # for the CSV file name: predictions_<name>.csv
    dataset: Dataset
    sources: list[str] | None
    labelled: bool


class ImageList:
    """Image files as a file source (``read`` decodes one), for a folder given to predict."""

    kind, is_image, test, max_value = "files", True, None, 255.0

    def __init__(self, files: list[Path], channels: int):
        self.files, self.channels = [str(f) for f in files], channels

    def read(self, i: int) -> np.ndarray | None:
        from trainkit.data.files import read_image

        return read_image(Path(self.files[i]), self.channels)

    def describe(self, i: int) -> str:
        return self.files[i]


def resolve_input(spec: str, dm: DataModule) -> PredictInput:
    """The inputs ``--input`` names.

    Raises:
        ConfigError: not a split, folder or file of features; no images; a wrong number of
            features or missing columns; missing or non-finite values (naming the row).
    """
    if spec in SPLITS:
        return PredictInput(spec, dm.eval_split(spec), None, True)
    path = Path(spec)
    if path.is_dir():
        return _folder(path, dm)
    if dm.table is not None and path.is_file():
        columns = dm.table.read_features(path, KEY)
        x = dm.table.encode(columns)
        return PredictInput(path.stem, dm.eval_dataset(x), [str(i) for i in range(1, len(x) + 1)], False)
    if path.is_file() and path.suffix.lower() == ".csv":
        x, sources = _csv_rows(path, dm.input_shape)
        return PredictInput(path.stem, dm.eval_dataset(x), sources, False)
    what = "a .csv/.tsv/.parquet file with the training columns" if dm.table is not None else "a .csv file of features"
    raise ConfigError(f"must be {', '.join(SPLITS)}, a folder of images or {what}; got {spec!r}", KEY)


def _folder(path: Path, dm: DataModule) -> PredictInput:
    from trainkit.data.files import IMAGE_SUFFIXES, read_image

    if len(dm.input_shape) != 3 or dm.input_shape[0] not in (1, 3):
        raise ConfigError(f"a folder of images needs an image dataset; {dm.dataset_name} has inputs of shape {dm.input_shape}", KEY)
    channels, hw = dm.input_shape[0], tuple(dm.input_shape[1:])
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ConfigError(f"{str(path)!r} holds no image files ({', '.join(IMAGE_SUFFIXES)})", KEY)
    names = [str(f.relative_to(path)) for f in files]
    if dm.kind != "memory":  # read per sample, as the run's own images are
        samples = SourceSamples(ImageList(files, channels), np.arange(len(files)), np.zeros(len(files), np.int64),
                                dm.layout.pipelines["eval"], dm.seed, dm.layout.resize["eval"])
        _check_readable(samples, files)
        return PredictInput(path.name, dm.eval_split(None, samples), names, False)
    images = []
    for f in files:
        img = read_image(f, channels, hw)
        if img is None:
            raise ConfigError(f"cannot read image {str(f)!r} (corrupt or not an image)", KEY)
        images.append(img)
    x = np.stack(images).astype(np.float32)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    # 8-bit files in the dataset's own units (digits: 0-16)
    x *= dm.data.max_value / 255.0
    return PredictInput(path.name, dm.eval_dataset(x), names, False)


def _check_readable(samples: SourceSamples, files: list[Path]) -> None:
    from trainkit.data.scan import image_size

    for f in files:  # headers only: cheap, and the run dir stays untouched by a bad folder
        if image_size(f) is None:
            raise ConfigError(f"cannot read image {str(f)!r} (corrupt or not an image)", KEY)


def _csv_rows(path: Path, shape: tuple[int, ...]) -> tuple[np.ndarray, list[str]]:
    width = math.prod(shape)
    with path.open(newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    if rows and not _numeric(rows[0]):
        rows = rows[1:]  # a header
    if not rows:
        raise ConfigError(f"{str(path)!r} holds no rows of features", KEY)
    for i, row in enumerate(rows, 1):
        if len(row) != width or not _numeric(row):
            raise ConfigError(f"{str(path)!r} row {i}: need {width} numbers (inputs of shape {shape}), got {len(row)} fields", KEY)
        bad = [v for v in row if not math.isfinite(float(v))]
        if bad:
            raise ConfigError(f"{str(path)!r} row {i} holds {bad[0].strip()!r}: every feature must be a finite number", KEY)
    x = np.asarray(rows, dtype=np.float32).reshape(len(rows), *shape)
    return x, [str(i) for i in range(len(rows))]


def _numeric(row: list[str]) -> bool:
    try:
        [float(v) for v in row]
    except ValueError:
        return False
    return True


def output_path(run_dir: Path, name: str) -> Path:
    """``predictions.csv`` for the test split (the default), ``predictions_<name>.csv`` otherwise."""
    return run_dir / ("predictions.csv" if name == "test" else f"predictions_{name}.csv")


def write_predictions(path: Path, batches: list[dict[str, torch.Tensor]], inp: PredictInput, classes: tuple[str, ...]) -> None:
    """One row per input: index, [source], pred (argmax), label (class name), [target], prob_<c>."""
    probs = torch.cat([b["probs"] for b in batches])
    preds = torch.cat([b["pred"] for b in batches])
    targets = torch.cat([b["target"] for b in batches]) if inp.labelled else None
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        head = ["index"] + (["source"] if inp.sources else []) + ["pred", "label"] + (["target"] if targets is not None else [])
        w.writerow(head + [f"prob_{c}" for c in range(probs.shape[1])])
        for i in range(len(preds)):
            row = [i] + ([inp.sources[i]] if inp.sources else []) + [int(preds[i]), classes[int(preds[i])]]
            row += [int(targets[i])] if targets is not None else []
            w.writerow(row + [f"{p:.6f}" for p in probs[i].tolist()])
    tmp.replace(path)
