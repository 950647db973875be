"""``data.dataset: streaming``: train from shards written by ``trainkit pack`` (LitData), in a
local folder or an object store (``data.root: s3://bucket/prefix``).

Each rank streams only its part of a split and each DataLoader worker a part of that (LitData
assigns chunks, whole batches per worker); the training split's order is reshuffled every
epoch from (seed, epoch). Samples are decoded (OpenCV) and augmented in the workers, the
random draw a function of (seed, epoch, sample index), and collated as uint8; standardization
with the statistics recorded by ``pack`` runs on the training device.

Exact mid-epoch resume is kept by :class:`StreamingLoader`, a thin wrapper of LitData's
``StreamingDataLoader`` that keeps the position itself. LitData 0.2.76 alone does not keep it
under Lightning's fit loop: ``StreamingDataLoader.load_state_dict`` sets a ``restore`` flag
that only the end of a fully exhausted iterator clears, and Lightning ends an epoch by count
(``len(loader)`` batches) without exhausting it, so every epoch after a resumed one replays
the resumed epoch's order (0 workers) or skips its first samples again (2 workers);
``tests/test_streaming.py::test_litdata_alone_loses_the_order_after_a_resume`` shows it.
The wrapper sets LitData's epoch and restore state from the trainer's epoch before each
epoch, and takes the position from the batches the trainer has processed (the loader runs
ahead of the step).
"""

from __future__ import annotations

import copy
import os
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, default_collate

from trainkit.data.augment import seed_pipeline
from trainkit.data.samples import transform_image
from trainkit.data.shards import SPLITS, join, read_meta, require_litdata
from trainkit.errors import ConfigError

try:
    from litdata import StreamingDataLoader, StreamingDataset
except ImportError:  # optional: StreamingSource raises require_litdata's install message first
    StreamingDataLoader = StreamingDataset = object  # type: ignore[misc,assignment]


class StreamingSource:
    """The shards under ``root`` as a source (``kind = "streaming"``): metadata known up front,
    splits already cut when packing, inputs streamed by :meth:`loader`.

    Args:
        root: the ``trainkit pack`` output, a folder or ``s3://bucket/prefix``.
        packed_args: ``data.dataset_args`` of the recipe (the packed source's; checked against
            the pack's in :func:`setup_streaming`).

    Raises:
        ConfigError: LitData missing, or the root, its metadata or a split index missing or
            unreadable (naming it).
    """

    kind = "streaming"
    test = None

    def __init__(self, root: str | None, packed_args: dict[str, Any] | None = None):
        require_litdata("data.dataset")
        self.packed_args = dict(packed_args or {})
        if not root:
            raise ConfigError("streaming needs the `trainkit pack` output: a folder or s3://bucket/prefix", "data.root")
        self.root = str(root)
        self.meta = read_meta(self.root, "data.root")
        meta = self.meta
        self.classes = tuple(meta["classes"])
        self.input_shape = tuple(int(v) for v in meta["input_shape"])
        self.is_image = bool(meta["is_image"])
        self.max_value = float(meta["max_value"])
        self.encoding = str(meta["encoding"])
        self.split_sizes = {s: int(meta["splits"].get(s, 0)) for s in SPLITS}
        view = (-1, 1, 1) if len(self.input_shape) == 3 else self.input_shape
        self.stats = (np.asarray(meta["mean"], np.float32).reshape(view), np.asarray(meta["std"], np.float32).reshape(view))
        # what trainkit.data.layout.file_layout reads of a source: an image folder's own sizes
        # (its files are stored as they are), else the one size everything was stored at
        self.sample_shape = self.input_shape
        self.channels = int(meta.get("channels") or self.input_shape[0])
        self.size = tuple(meta["size"]) if meta.get("size") else None
        stored = (meta.get("sizes") or [list(self.input_shape[1:])]) if self.is_image else []
        self._sizes = np.asarray(stored, np.int64).reshape(-1, 2)

    def sizes(self) -> np.ndarray:
        """The distinct ``(h, w)`` of the stored images."""
        return self._sizes

    def odd_one(self) -> str:
        return f"the images under {self.root!r} have {len(self._sizes)} sizes ({self._sizes[0].tolist()}, ...)"

    def describe(self, i: int) -> str:
        return f"sample {i} of {self.root!r}"

    def loader(self, split: str, *, batch_size: int, shuffle: bool, seed: int, rank: int, world_size: int,
               num_workers: int, pin_memory: bool, pipeline: Any = None, augment_seed: int = 0,
               resize: tuple[int, int] | None = None,
               progress: Callable[[], tuple[int, int]] | None = None) -> "StreamingLoader":
        """A loader of split ``split`` on this rank: ``(uint8 N,C,H,W images or float N,F rows,
        int64 labels)`` batches, resumable (:class:`StreamingLoader`).

        Args:
            batch_size, num_workers, pin_memory: as for a DataLoader.
            shuffle: the training order (reshuffled per epoch from ``seed``); False: stored order.
            seed: the shuffle seed.
            rank, world_size: this process in the job (LitData reads them from torch.distributed).
            pipeline: albumentations pipeline run per sample in the workers (None: none).
            augment_seed: its seed; a sample's draw is a function of (augment_seed, epoch, index),
                of (augment_seed, index) alone when not shuffling (evaluation).
            resize: ``(h, w)`` images are resized to before the pipeline (the layout's), or None.
            progress: ``() -> (epoch, batches processed)`` of the trainer (None: the loader's own).
        """
        require_litdata("data.dataset")
        if not self.split_sizes.get(split):
            raise ConfigError(f"the shards under {self.root!r} hold no {split} split", "data.root")
        # the training split drops LitData's remainder on many ranks (equal steps on every rank);
        # evaluation keeps every sample (ranks may then differ by a batch: no collective per step)
        drop_last = None if shuffle else False
        dataset = StreamedSplit(join(self.root, split), Decoder(self, pipeline, augment_seed, resize), train=shuffle,
                                shuffle=shuffle, seed=seed, drop_last=drop_last)
        env = dataset.distributed_env
        assert (env.world_size, env.global_rank) == (world_size, rank), (env.world_size, env.global_rank, world_size, rank)
        return StreamingLoader(dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                               progress=progress, seed=seed)


class Decoder:
    """A stored sample -> ``(CHW uint8 image or float array, label)``: decoded as the source's
    own loader reads it (an image folder's flags and colour order), resized to the layout's
    size if it says so, augmented with a draw from (seed, epoch, index)."""

    def __init__(self, source: StreamingSource, pipeline: Any, seed: int, resize: tuple[int, int] | None):
        self.root, self.encoding, self.shape = source.root, source.encoding, source.input_shape
        self.channels, self.max_value = source.channels, source.max_value
        self.pipeline, self.seed, self.resize = pipeline, seed, resize

    def __call__(self, sample: dict[str, Any], epoch: int | None) -> tuple[torch.Tensor, int]:
        index, label = int(sample["index"]), int(sample["label"])  # the collate makes the batch's tensor
        if self.encoding == "float32":
            return torch.from_numpy(self._floats(sample["x"], epoch, index)), label
        import cv2

        flag = cv2.IMREAD_COLOR if self.channels == 3 else cv2.IMREAD_GRAYSCALE
        img = cv2.imdecode(np.frombuffer(sample["image"], np.uint8), flag)
        if img is None:
            raise ValueError(f"sample {index} of the shards under {self.root!r} is not a readable image")
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if img.ndim == 3 else img
        img = transform_image(img, self.resize, self.pipeline, self.seed, epoch, index)
        # a CHW view; the collate's stack writes the contiguous batch in one copy
        return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1), label

    def _floats(self, x: Any, epoch: int | None, index: int) -> np.ndarray:
        x = np.asarray(x, np.float32).reshape(self.shape)
        if self.pipeline is not None:  # float images (synthetic): augmented in [0, 1], as in memory
            seed_pipeline(self.pipeline, self.seed, epoch, index)
            out = self.pipeline(image=np.ascontiguousarray(x.transpose(1, 2, 0)) / np.float32(self.max_value))["image"]
            x = (out[..., None] if out.ndim == 2 else out).transpose(2, 0, 1) * np.float32(self.max_value)
        return np.ascontiguousarray(x, np.float32)


class StreamedSplit(StreamingDataset):
    """One split's shards; each sample decoded and augmented where it is read (a worker).

    ``epoch`` is set by :class:`StreamingLoader` in the main process before each epoch's
    workers start (they are never persistent, so they carry it).
    """

    def __init__(self, input_dir: str, decoder: Decoder, train: bool, **kwargs: Any):
        super().__init__(input_dir, **kwargs)
        self.decoder, self.train = decoder, train
        self.epoch = 0

    def __getitem__(self, index: Any) -> Any:
        return self.decoder(super().__getitem__(index), self.epoch if self.train else None)


class StreamingLoader(StreamingDataLoader):
    """LitData's loader with the position kept by trainkit: ``state_dict`` is the (epoch,
    batches processed) of the trainer, with the LitData state for exactly that position.

    Before each epoch it sets LitData's epoch from the trainer's (``progress``, or
    :meth:`set_epoch` without a trainer), restarts LitData's bookkeeping unless a checkpoint of
    this very epoch is pending, and re-seeds its own generator from (seed, epoch): creating the
    iterator draws the workers' base seed from it, not from the global torch stream, which a
    resumed run would otherwise reach at a different point (different dropout masks).
    Workers are not persistent: LitData passes its epoch and resume state to them when they start.

    Args:
        dataset: a :class:`StreamedSplit`.
        batch_size, num_workers, pin_memory: as for a DataLoader.
        progress: ``() -> (epoch, batches processed in it)`` of the trainer, or None.
        seed: seeds the generator per epoch.
    """

    def __init__(self, dataset: StreamedSplit, batch_size: int, num_workers: int, pin_memory: bool,
                 progress: Callable[[], tuple[int, int]] | None = None, seed: int = 0):
        super().__init__(dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory,
                         persistent_workers=False, collate_fn=default_collate, generator=torch.Generator())
        self.progress, self.seed = progress, seed
        self.epoch = 0
        self.served = 0  # batches yielded in the current epoch
        self._resume: dict[str, Any] | None = None

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next iteration serves (without a trainer)."""
        self.epoch = int(epoch)

    def _position(self) -> tuple[int, int]:
        return self.progress() if self.progress is not None else (self.epoch, self.served)

    def __iter__(self) -> Iterator[Any]:
        epoch = self._position()[0]
        self.epoch = epoch
        self.generator.manual_seed(self.seed * 100_003 + epoch)
        self.dataset.epoch = epoch
        resume, self._resume = self._resume, None
        if resume is not None and resume["epoch"] == epoch and 0 < resume["batches"] < len(self):
            super().load_state_dict(copy.deepcopy(resume["litdata"]))  # LitData then resumes mid-epoch
            self.served = resume["batches"]
        else:
            # a fresh epoch, whatever LitData's flag says (Lightning never exhausts the iterator)
            self.restore = False
            self.current_epoch = epoch  # LitData adds one: it counts epochs from 1
            self.served = 0
        for batch in super().__iter__():
            self.served += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        epoch, batches = self._position()
        workers = max(self.num_workers, 1)
        # LitData's own state for exactly `batches` batches (batches come round-robin from the workers)
        self.dataset.current_epoch = epoch + 1
        dataset = copy.deepcopy(self.dataset.state_dict(batches * self.batch_size, self.num_workers, self.batch_size))
        litdata = {"dataset": dataset, "current_epoch": epoch + 1, "num_samples_yielded": batches * self.batch_size,
                   "latest_worker_idx": (batches - 1) % workers if batches else 0}
        return {"epoch": int(epoch), "batches": int(batches), "litdata": litdata}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Applied when the epoch it belongs to starts (an epoch-end position starts the next fresh).

        Raises:
            ConfigError: a mid-epoch position saved with another world size, workers or batch size.
        """
        saved = state["litdata"]["dataset"]
        now = (self.dataset.distributed_env.world_size, max(self.num_workers, 1), self.batch_size)
        then = (saved["world_size"], saved["num_workers"], saved["batch_size"])
        if now != then and 0 < state["batches"] < len(self):
            raise ConfigError(
                f"the checkpoint stopped mid-epoch with world size {then[0]}, num_workers {then[1]}, batch_size "
                f"{then[2]}; resume with those (now {now[0]}, {now[1]}, {now[2]}) or from an epoch-end checkpoint",
                "data.num_workers",
            )
        self._resume = state


class ShardSamples(Dataset):
    """A split's samples by position in stored order, read by random access (any process):
    for the loops that feed the model themselves (the fit verdict's subset, predictions, LSUV).
    Each process opens the shards itself on first use."""

    def __init__(self, source: StreamingSource, split: str, decoder: Decoder):
        self.root, self.n, self.decoder = join(source.root, split), source.split_sizes.get(split, 0), decoder
        self._shards: Any = None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._shards is None:
            self._shards = StreamingDataset(self.root)
        return self.decoder(self._shards[int(i)], None)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_shards": None}


# -- the data module's side: DataModule calls these for a streaming source --------------------
def setup_streaming(dm: Any) -> None:
    """``DataModule.setup`` for shards: the pack's splits and training statistics (or the
    recipe's ``data.mean``/``data.std``), the recipe's pipelines and batch size.

    Raises:
        ConfigError: a key that acts on what was fixed when packing, augmentation of a table,
            a batch larger than the training split.
    """
    from lightning.pytorch.utilities import rank_zero_warn

    from trainkit.data.stats import Standardize, given_stats

    source = dm.data
    fixed = {"data.folds": dm.folds, "data.permute_labels": dm.permute_labels, "data.whiten": dm.whiten}
    for key, on in fixed.items():
        if on:
            raise ConfigError(f"acts on the splits, fixed when the shards under {source.root!r} were packed: "
                              "pack the recipe with it instead (trainkit pack --config R.yaml ...)", key)
    if dm.loader == "memory":
        raise ConfigError("streaming shards are read per sample; data.loader: memory is for sources held in memory",
                          "data.loader")
    packed = _packed_data_keys(source.meta.get("recipe"))
    given = {k: getattr(dm, k) for k in ("val_fraction", "test_fraction", "split_seed")}
    if source.packed_args:
        given["dataset_args"] = source.packed_args
    for key, value in given.items():
        if key in packed and packed[key] != value:
            rank_zero_warn(f"data.{key} is {value!r}, but the shards under {source.root!r} were packed with "
                           f"{packed[key]!r}: the pack's apply")
    dm._check_data_options(source)
    layout = dm.layout
    shape = layout.shape
    mean, std = source.stats
    if not dm.standardize:
        mean, std = np.zeros_like(mean), np.ones_like(std)
    elif (given := given_stats(*dm.given, shape, source.max_value)) is not None:
        mean, std = given
    dm.mean, dm.std, dm.standardizer = mean, std, Standardize(mean, std)
    dm.indices = {s: np.arange(n) for s, n in source.split_sizes.items()}
    for split in SPLITS:
        which = "train" if split == "train" else "eval"
        dm.splits[split] = ShardSamples(source, split, Decoder(source, layout.pipelines[which], dm.seed, layout.resize[which]))
    n_train = source.split_sizes["train"]
    if n_train < dm.batch_size:
        raise ConfigError(f"{dm.batch_size} is larger than the training split ({n_train} samples under {source.root!r})",
                          "data.batch_size")


def _packed_data_keys(recipe: str | None) -> dict[str, Any]:
    """The data keys of the recipe the shards were packed with, that fixed their content."""
    import yaml

    try:
        data = (yaml.safe_load(recipe or "") or {}).get("data") or {}
    except yaml.YAMLError:
        return {}
    return {k: data[k] for k in ("val_fraction", "test_fraction", "split_seed", "dataset_args") if k in data}


def streaming_loader(dm: Any, split: str, shuffle: bool, batch_size: int, pin_memory: bool) -> StreamingLoader:
    """The data module's loader of ``split`` from its streaming source, on this rank."""
    trainer = dm.trainer
    if trainer is not None:
        world, rank = trainer.world_size, trainer.global_rank
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    else:
        world, rank = 1, 0
    progress = None
    if shuffle and trainer is not None:
        progress = lambda: (trainer.current_epoch, dm._batches_processed())  # noqa: E731
    which = "train" if split == "train" else "eval"
    return dm.data.loader(
        split, batch_size=batch_size, shuffle=shuffle, seed=int(os.environ.get("PL_GLOBAL_SEED", 0)), rank=rank,
        world_size=world, num_workers=dm.num_workers, pin_memory=pin_memory, pipeline=dm.layout.pipelines[which],
        augment_seed=dm.seed, resize=dm.layout.resize[which], progress=progress,
    )


def streaming_eval_split(dm: Any, split: str, indices: Any = None) -> Dataset:
    """Split ``split`` preprocessed as validation data and standardized on the host. With
    ``indices``, as many samples from the start of the stored order: a random subset (the
    order is a seeded permutation) that an object store serves from its first chunks."""
    from trainkit.data.samples import HostStandardized

    samples: Dataset = dm.splits[split]
    if indices is not None:
        samples = Subset(samples, list(range(min(len(indices), len(samples)))))
    return HostStandardized(samples, dm.standardizer)


def streaming_train_batches(dm: Any, world_size: int) -> int:
    """Training batches per epoch on each rank: LitData drops the remainder of whole batches
    on many ranks (every rank steps alike), and keeps a partial last batch on one."""
    n = dm.data.split_sizes["train"]
    return -(-n // dm.batch_size) if world_size == 1 else n // dm.batch_size // world_size
