"""Writing a recipe's splits as LitData shards (``trainkit pack``; the format is in
:mod:`trainkit.data.shards`).

Each split is written by ``litdata.optimize`` as samples ``{index, label, image | x}``: ``index``
is the sample's position in its split (the per-sample augmentation seed and the proof that a
rank saw each sample once), ``image`` encoded bytes (an image folder's own file bytes; PNG,
lossless, for in-memory 8-bit images, so the decoded pixels are the ones the recipe's own
loader reads), ``x`` a float32 array for tables and for images whose values are not 8-bit
pixels (the ``synthetic`` set). Decoding is trainkit's own (OpenCV); LitData's image
serializers, which import torchvision, never run.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from trainkit.data.shards import FORMAT, META_FILE, SPLITS, VERSION, exists, join, read_meta, require_litdata, write_text
from trainkit.errors import ConfigError

ENCODINGS = ("file", "png", "float32")


def encoding_for(x: np.ndarray, is_image: bool) -> str:
    """An in-memory split's encoding: ``png`` for images of 8-bit pixel values, else ``float32``.

    >>> encoding_for(np.array([[[[0.0, 16.0]]]]), True), encoding_for(np.array([[[[0.5]]]]), True)
    ('png', 'float32')
    """
    if not is_image or x.size == 0:
        return "float32"
    eight_bit = x.min() >= 0 and x.max() <= 255 and bool(np.all(x == np.rint(x)))
    return "png" if eight_bit else "float32"


def encode_png(hwc: np.ndarray) -> bytes:
    """An HWC (or HW) image of 8-bit values as PNG bytes (RGB or grey).

    >>> len(encode_png(np.zeros((4, 4, 3)))) > 0
    True
    """
    import cv2

    img = np.ascontiguousarray(hwc).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)  # OpenCV writes BGR
    elif img.ndim == 3:
        img = img[..., 0]
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise ValueError(f"OpenCV could not encode an image of shape {hwc.shape} as PNG")
    return buf.tobytes()


class Encoder:
    """Split position -> LitData sample; picklable (``optimize`` sends it to its workers).

    Args:
        encoding: ``file`` (the bytes of the file at path ``read(inputs[pos])``), ``png``
            (``inputs[pos]`` an 8-bit CHW array, or ``read(inputs[pos])`` an HWC uint8 image
            resized to ``hw``) or ``float32`` (``inputs[pos]`` or ``read(inputs[pos])``).
        inputs: per position, an array (memory) or an index into the source (``read``).
        labels: the split's labels.
        read: the source's path of index i (``file``) or its decoded input i; None: memory.
        hw: the size ``read`` images are stored at.
    """

    def __init__(self, encoding: str, inputs: Any, labels: np.ndarray, read: Callable[[int], Any] | None = None,
                 hw: tuple[int, int] | None = None):
        assert encoding in ENCODINGS, encoding
        self.encoding, self.inputs, self.labels, self.read, self.hw = encoding, inputs, np.asarray(labels, np.int64), read, hw

    def __call__(self, pos: int) -> dict[str, Any]:
        sample: dict[str, Any] = {"index": int(pos), "label": int(self.labels[pos])}
        if self.encoding == "file":
            with open(self.read(int(self.inputs[pos])), "rb") as f:
                sample["image"] = f.read()
        elif self.encoding == "float32":
            sample["x"] = np.ascontiguousarray(self._input(pos), dtype=np.float32)
        elif self.read is not None:
            sample["image"] = encode_png(self._input(pos))
        else:
            sample["image"] = encode_png(np.asarray(self.inputs[pos]).transpose(1, 2, 0))
        return sample

    def _input(self, pos: int) -> np.ndarray:
        if self.read is None:
            return np.asarray(self.inputs[pos])
        import cv2

        img = self.read(int(self.inputs[pos]))
        if img is None:
            raise ValueError(f"input {int(self.inputs[pos])} cannot be read")
        if self.hw is not None and img.ndim >= 2 and img.shape[:2] != tuple(self.hw):
            img = cv2.resize(img, (self.hw[1], self.hw[0]), interpolation=cv2.INTER_AREA)
        return img


@dataclass
class Split:
    """One split as :func:`pack` writes it: its encoder and its length."""

    encoder: Encoder
    size: int


def plan(dm: Any) -> tuple[dict[str, Split], dict[str, Any]]:
    """How each split of a set-up data module is stored, and the metadata that describes it.

    In-memory sources store their arrays (:func:`encoding_for`); an image folder stores each
    file's own bytes (no re-encoding: the decode in training is the folder's own); other file
    sources (a user's Dataset) their decoded images resized to the model's input size as PNG,
    or their float arrays.
    """
    source = dm.data
    shape = tuple(int(v) for v in dm.input_shape)
    info: dict[str, Any] = {"channels": shape[0] if len(shape) == 3 else None, "size": None, "sizes": None}
    splits: dict[str, Split] = {}
    if dm.kind == "memory":
        encoding = encoding_for(dm.arrays["train"][0], bool(source.is_image))
        for split in SPLITS:
            x, y = dm.arrays[split]
            splits[split] = Split(Encoder(encoding, x, y), len(y))
        return splits, {"encoding": encoding, **info}
    files = hasattr(source, "index") and hasattr(source.index, "path")
    encoding = "file" if files else "png" if source.is_image else "float32"
    for split in SPLITS:
        part = source.test if split == "test" and source.test is not None else source
        idx = np.asarray(dm.indices[split], np.int64)
        labels = _labels(dm.splits[split], part, idx)
        if files:
            encoder = Encoder("file", idx, labels, read=part.index.path)  # the index pickles as two arrays
        else:  # decoded by the source: stored at the model's size
            encoder = Encoder(encoding, idx, labels, read=part.read, hw=shape[1:] if encoding == "png" else None)
        splits[split] = Split(encoder, len(idx))
    if files:
        info.update(size=list(source.size) if source.size else None,
                    sizes=np.unique(source.sizes(), axis=0).astype(int).tolist())
    return splits, {"encoding": encoding, **info}


def _labels(samples: Any, part: Any, idx: np.ndarray) -> np.ndarray:
    # the data module's labels (permuted under data.permute_labels), whatever the split's type
    if hasattr(samples, "labels"):
        return np.asarray(samples.labels, np.int64)
    if hasattr(samples, "tensors"):  # data.loader: memory (materialized)
        return samples.tensors[1].numpy().astype(np.int64)
    return np.asarray(part.y, np.int64)[idx]


@dataclass
class PackedSplits:
    """What :func:`pack` wrote: where, the split sizes, and the seconds it took."""

    root: str
    sizes: dict[str, int]
    seconds: float


def check_out(out: str, key: str = "--out") -> None:
    """``out`` must not exist yet: pack never overwrites (nor mixes into) earlier shards.

    Raises:
        ConfigError: it exists (or holds objects), or its parent folder is missing.
    """
    require_litdata(key)
    if exists(out, key):
        raise ConfigError(f"{out!r} exists; `trainkit pack` never overwrites: name a new folder or prefix", key)
    parent = os.path.dirname(os.path.abspath(out))
    if "://" not in out and not os.path.isdir(parent):
        raise ConfigError(f"the folder {parent!r} that would hold {out!r} does not exist", key)


def pack(dm: Any, out: str, recipe: str, workers: int = 1, chunk_bytes: str = "64MB",
         log: Callable[[str], None] = print) -> PackedSplits:
    """Write ``dm``'s splits (set up, as the recipe splits them) under ``out`` and describe them.

    Args:
        dm: a set-up :class:`~trainkit.data.datamodule.DataModule`.
        out: a new folder or ``s3://bucket/prefix`` (checked by :func:`check_out` first).
        recipe: the resolved recipe text, recorded in the metadata.
        workers: ``optimize`` worker processes.
        chunk_bytes: the size LitData cuts chunks at (``64MB``: LitData's default).
        log: where progress lines go.

    Raises:
        ConfigError: ``out`` exists, a source LitData cannot pack.
    """
    litdata = require_litdata("--out")
    check_out(out)
    start = time.monotonic()
    splits, info = plan(dm)
    sizes = {s: splits[s].size for s in SPLITS}
    if "://" not in out:
        os.makedirs(out)
    for k, split in enumerate(SPLITS):
        if not sizes[split]:
            continue
        log(f"packing {split}: {sizes[split]} samples ({info['encoding']})")
        # stored in a seeded random order: LitData shuffles chunks and windows within them, so a
        # class-sorted layout would give batches of few classes; the first stored samples are
        # then a random subset too (the fit verdict's training subset reads only those)
        order = np.random.default_rng([dm.split_seed, k]).permutation(sizes[split])
        _optimize(litdata, splits[split].encoder, order.tolist(), join(out, split), workers, chunk_bytes)
    mean, std = (np.asarray(v, np.float64) for v in (dm.mean, dm.std))
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "dataset": dm.dataset_name,
        "classes": [str(c) for c in dm.data.classes],
        "input_shape": [int(v) for v in dm.input_shape],
        "is_image": bool(dm.data.is_image),
        "max_value": float(dm.data.max_value),
        "mean": mean.reshape(-1).tolist(),
        "std": std.reshape(-1).tolist(),
        "splits": sizes,
        **info,
        "recipe": recipe,
    }
    # written last: a pack that failed part-way has no metadata and is never read as complete
    write_text(out, META_FILE, json.dumps(meta, indent=1) + "\n", "--out")
    read_meta(out, "--out")  # every split's index is where the readers will look
    return PackedSplits(out, sizes, time.monotonic() - start)


def _optimize(litdata: Any, encoder: Encoder, order: list[int], out: str, workers: int, chunk_bytes: str) -> None:
    # optimize sets the process-wide start method with force=True; put it back after, so that
    # DataLoaders this process makes later keep the platform's default. Fork where there is one:
    # a spawned worker re-imports torch and LitData (~8 s for 1 worker, 19 s for 2, against
    # 0.4 and 0.6 s forked, measured here); the workers only encode with NumPy and OpenCV.
    before = multiprocessing.get_start_method(allow_none=True)
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    try:
        litdata.optimize(
            fn=encoder, inputs=order, output_dir=out, chunk_bytes=chunk_bytes,
            num_workers=max(1, min(workers, len(order))), reorder_files=False, verbose=False, start_method=method,
        )
    finally:
        multiprocessing.set_start_method(before, force=True)
