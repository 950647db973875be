"""The data model: every dataset is a *source*, whose labels are known up front and whose
inputs are read on demand.

What :class:`~trainkit.data.datamodule.DataModule` asks of a source (a ``data.dataset``
registry entry or a user's class path returns one):

``y``
    int64 labels ``(N,)`` in ``[0, len(classes))``, known without reading an input: seeded
    stratified splits, k-fold, ``permute_labels`` and DDP shards are index arrays over them.
``classes``
    class names, index = label.
``test``
    the source's own test split (a source of the same kind), or None.
``kind``
    ``"memory"`` or ``"files"``, below. (``"streaming"`` is reserved, see the end.)

Two kinds are built:

*memory* (:class:`~trainkit.data.datasets.ArrayData`: digits, breast_cancer, synthetic, the
torchvision sets, tables from CSV/Parquet once encoded, :mod:`trainkit.data.tables`): ``x``,
the whole input array, float32 ``(N, C, H, W)`` or ``(N, F)``, and ``max_value``. The data
module standardizes each split once on the host; these splits also feed the
``data.loader: memory`` fast path (whole splits on the device, :mod:`trainkit.data.memory`).

*files* (:class:`~trainkit.data.files.ImageFiles`, a user's Dataset in
:mod:`trainkit.data.user`): ``read(i)`` returns input ``i`` decoded (an HWC or HW uint8 image,
or a float array), None if it cannot be read; ``describe(i)`` names it in messages;
``is_image`` and ``max_value`` as above. Each split is a
:class:`~trainkit.data.samples.SourceSamples` read per sample in DataLoader workers; batches
are collated as uint8 and standardized on the training device
(``DataModule.on_after_batch_transfer``).

Streaming (``trainkit pack`` shards, built separately) plugs in as a third kind whose splits
already exist (they were cut when packing), so it gives no ``y`` to split. It provides:

- ``kind = "streaming"``, ``classes``, ``input_shape``, ``is_image``, ``max_value``;
- ``split_sizes: dict[str, int]`` (``train``, ``val``, ``test``);
- ``stats: tuple[mean, std]``, the training split's, computed when packing;
- ``loader(split, *, batch_size, shuffle, seed, rank, world_size, num_workers, pin_memory)``:
  an iterable of *encoded* batches, exactly what a DataLoader over ``SourceSamples`` yields
  (``(uint8 N,C,H,W images or float N,F rows, int64 labels)``), read by rank and worker, the
  training split reshuffled per epoch from ``(seed, epoch)``, with ``set_epoch(epoch)``,
  ``__len__`` (batches per epoch on this rank), and ``state_dict()`` / ``load_state_dict()``
  holding its own position, which Lightning stores in the checkpoint and gives back on
  resume (as :class:`~trainkit.data.loader.ResumableLoader` does for the other kinds).

The data module then uses ``loader(...)`` in place of building a DataLoader (``_loader``),
takes ``stats`` instead of computing them, and leaves everything after the transfer
(standardization, mixing, channels_last) unchanged. Augmentation of streamed samples runs in
the loader's workers with the same per-sample seeding (:func:`~trainkit.data.augment.seed_pipeline`
from (seed, epoch, sample index)).
"""

from __future__ import annotations

from typing import Any

KINDS = ("memory", "files")


def kind_of(source: Any) -> str:
    """A source's kind (``memory`` for anything with an input array ``x``)."""
    return getattr(source, "kind", "memory")
