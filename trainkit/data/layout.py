"""The input shape the model sees and how each split's images get to it.

For in-memory arrays the shape is the data's; pipelines must keep it. For file sources
(image folders, a user's Dataset of images) the shape is ``data.dataset_args.size`` if given,
else the images' one common size; with images of different sizes and no ``size``, a training
pipeline that always ends in one size (a dict pipeline ending in ``RandomResizedCrop`` or
``Resize``) sets it. Each pipeline is then checked with every transform forced on (a
``Resize`` that albumentations applies with p 0.5 must not slip through) on inputs of the
smallest and largest sizes present: if it always gives the shape, it runs on each image at
its own size when it starts with a transform that sets the size (``imagenet``'s random
resized crop on the real image, a ``Resize`` + ``CenterCrop`` eval pipeline; see
``SIZE_SETTERS``); otherwise images are resized to the shape first (``cifar``'s pad-and-crop
works on the resized image), and the pipeline must then keep it. Anything else is refused
with exit 2 naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from trainkit.data.augment import PIPELINE_SPLITS, build_pipeline, output_shapes
from trainkit.errors import ConfigError


SIZE_SETTERS = ("RandomResizedCrop", "RandomSizedCrop", "Resize", "SmallestMaxSize", "LongestMaxSize", "RandomCrop",
                "CenterCrop", "Crop", "RandomSizedBBoxSafeCrop")


@dataclass
class Layout:
    """Input shape, the pipelines (None: none) and per pipeline split the size images are
    resized to before it (None: their own size)."""

    shape: tuple[int, ...]
    pipelines: dict[str, Any]
    resize: dict[str, tuple[int, int] | None]


def memory_layout(data: Any, specs: dict[str, Any], seed: int) -> Layout:
    """In-memory arrays: the data's shape, kept by every pipeline."""
    shape = tuple(data.input_shape)
    if len(shape) != 3:
        return Layout(shape, {s: None for s in PIPELINE_SPLITS}, {s: None for s in PIPELINE_SPLITS})
    c, h, w = shape
    pipes = {s: build_pipeline(specs[s], h, w, seed, f"data.augment.{s}") for s in PIPELINE_SPLITS}
    for split, pipe in pipes.items():
        if pipe is not None:
            got = output_shapes(pipe, [(h, w, c)], np.float32) - {(h, w)}
            if got:
                g = sorted(got)[0]
                raise ConfigError(f"the pipeline turns {shape} images into {(c, *g)} (every transform applied); "
                                  "it must keep the size", f"data.augment.{split}")
    return Layout(shape, pipes, {s: None for s in PIPELINE_SPLITS})


def file_layout(source: Any, specs: dict[str, Any], seed: int) -> Layout:
    """A file source: the model's shape and each pipeline's resize, as the module docstring says."""
    if not source.is_image:
        for split, spec in specs.items():
            if spec is not None:
                raise ConfigError(f"needs images; {source.describe(0)} is a {source.sample_shape} float array",
                                  f"data.augment.{split}")
        return Layout(tuple(source.sample_shape), {s: None for s in PIPELINE_SPLITS}, {s: None for s in PIPELINE_SPLITS})
    c = source.channels if hasattr(source, "channels") else source.sample_shape[0]
    sizes = np.unique(source.sizes(), axis=0) if hasattr(source, "sizes") else np.array([source.sample_shape[1:]])
    probes = sorted({tuple(int(v) for v in sizes[k]) for k in (sizes[:, 0].argmin(), sizes[:, 0].argmax(),
                                                               sizes[:, 1].argmin(), sizes[:, 1].argmax())})
    hw = getattr(source, "size", None) or (probes[0] if len(sizes) == 1 else None)
    if hw is None:
        hw = _fixed_output(specs["train"], probes, c, seed)
        if hw is None:
            raise ConfigError(f"{source.odd_one()}: set data.dataset_args.size: [H, W], or a training pipeline "
                              "that ends in one size (e.g. RandomResizedCrop)", "data.root")
    h, w = hw
    pipes, resize = {}, {}
    for split in PIPELINE_SPLITS:
        key = f"data.augment.{split}"
        pipe = pipes[split] = build_pipeline(specs[split], h, w, seed, key)
        if pipe is None:
            resize[split] = None if len(sizes) == 1 and probes[0] == (h, w) else (h, w)
            continue
        first = type(pipe.transforms[0]).__name__ if len(pipe.transforms) else ""
        if first in SIZE_SETTERS and output_shapes(pipe, [(*p, c) for p in probes], np.uint8) == {(h, w)}:
            resize[split] = None  # ends in the model's size from any input size
            continue
        got = output_shapes(pipe, [(h, w, c)], np.uint8) - {(h, w)}
        if got:
            g = sorted(got)[0]
            raise ConfigError(f"the pipeline turns {h}x{w} images into {g[0]}x{g[1]} (every transform applied); it must "
                              f"give {h}x{w}, the input size (data.dataset_args.size)", key)
        resize[split] = (h, w)
    return Layout((c, h, w), pipes, resize)


def _fixed_output(spec: Any, probes: list[tuple[int, int]], c: int, seed: int) -> tuple[int, int] | None:
    """The one size a dict pipeline gives for inputs of every probed size, if it does."""
    if not isinstance(spec, dict):
        return None  # presets are built for a size; they cannot tell it
    pipe = build_pipeline(spec, *probes[0], seed, "data.augment.train")
    got = output_shapes(pipe, [(*p, c) for p in probes], np.uint8)
    return next(iter(got)) if len(got) == 1 else None
