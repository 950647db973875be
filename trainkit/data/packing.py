"""Writing a recipe's splits as LitData shards (``trainkit pack``; the format is in
:mod:`trainkit.data.shards`).

Each split is written by ``litdata.optimize`` as samples ``{index, label, image | x}``: ``index``
is the sample's position in its split (the per-sample augmentation seed and the proof that a
rank saw each sample once), ``image`` the encoded bytes of an 8-bit image (PNG, lossless, so
the decoded pixels are the ones the recipe's own loader reads), ``x`` a float32 array for
tables and for images whose values are not 8-bit pixels (the ``synthetic`` set). Decoding is
trainkit's own (OpenCV); LitData's image serializers, which import torchvision, never run.
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

ENCODINGS = ("png", "float32")


def encoding_for(x: np.ndarray, is_image: bool) -> str:
    """``png`` for images of 8-bit pixel values, ``float32`` for anything else.

    >>> encoding_for(np.array([[[[0.0, 16.0]]]]), True), encoding_for(np.array([[[[0.5]]]]), True)
    ('png', 'float32')
    """
    if not is_image or x.size == 0:
        return "float32"
    eight_bit = x.min() >= 0 and x.max() <= 255 and bool(np.all(x == np.rint(x)))
    return "png" if eight_bit else "float32"


def encode_png(chw: np.ndarray) -> bytes:
    """A CHW image of 8-bit values as PNG bytes (RGB or grey).

    >>> len(encode_png(np.zeros((3, 4, 4)))) > 0
    True
    """
    import cv2

    img = np.ascontiguousarray(np.asarray(chw).transpose(1, 2, 0)).astype(np.uint8)
    if img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)  # OpenCV writes BGR
    elif img.shape[2] == 1:
        img = img[..., 0]
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise ValueError(f"OpenCV could not encode an image of shape {chw.shape} as PNG")
    return buf.tobytes()


class Encoder:
    """Split position -> LitData sample; picklable (``optimize`` sends it to its workers).

    Args:
        x: the split's inputs, ``N,C,H,W`` or ``N,F``, in dataset units.
        y: the split's labels.
        encoding: ``png`` or ``float32``.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, encoding: str):
        assert encoding in ENCODINGS, encoding
        self.x, self.y, self.encoding = x, np.asarray(y, np.int64), encoding

    def __call__(self, pos: int) -> dict[str, Any]:
        sample: dict[str, Any] = {"index": int(pos), "label": int(self.y[pos])}
        if self.encoding == "png":
            sample["image"] = encode_png(self.x[pos])
        else:
            sample["x"] = np.ascontiguousarray(self.x[pos], dtype=np.float32)
        return sample


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
    arrays = dm.arrays
    encoding = encoding_for(arrays["train"][0], bool(dm.data.is_image))
    sizes = {s: int(len(arrays[s][1])) for s in SPLITS}
    if "://" not in out:
        os.makedirs(out)
    for split in SPLITS:
        if not sizes[split]:
            continue
        log(f"packing {split}: {sizes[split]} samples ({encoding})")
        x, y = arrays[split]
        _optimize(litdata, Encoder(x, y, encoding), sizes[split], join(out, split), workers, chunk_bytes)
    mean, std = (np.asarray(v, np.float64) for v in (dm.mean, dm.std))
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "dataset": dm.dataset_name,
        "classes": [str(c) for c in dm.data.classes],
        "input_shape": [int(v) for v in dm.input_shape],
        "is_image": bool(dm.data.is_image),
        "encoding": encoding,
        "max_value": float(dm.data.max_value),
        "mean": mean.reshape(-1).tolist(),
        "std": std.reshape(-1).tolist(),
        "splits": sizes,
        "recipe": recipe,
    }
    # written last: a pack that failed part-way has no metadata and is never read as complete
    write_text(out, META_FILE, json.dumps(meta, indent=1) + "\n", "--out")
    read_meta(out, "--out")  # every split's index is where the readers will look
    return PackedSplits(out, sizes, time.monotonic() - start)


def _optimize(litdata: Any, encoder: Encoder, n: int, out: str, workers: int, chunk_bytes: str) -> None:
    # optimize sets the process-wide start method with force=True; put it back after, so that
    # DataLoaders this process makes later keep the platform's default. Fork where there is one:
    # a spawned worker re-imports torch and LitData (~8 s for 1 worker, 19 s for 2, against
    # 0.4 and 0.6 s forked, measured here); the workers only encode with NumPy and OpenCV.
    before = multiprocessing.get_start_method(allow_none=True)
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    try:
        litdata.optimize(
            fn=encoder, inputs=list(range(n)), output_dir=out, chunk_bytes=chunk_bytes,
            num_workers=max(1, min(workers, n)), reorder_files=False, verbose=False, start_method=method,
        )
    finally:
        multiprocessing.set_start_method(before, force=True)
