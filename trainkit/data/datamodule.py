"""``DataModule``: resolves a source by name, splits it, standardizes it, and loads batches.

Its typed ``__init__`` arguments are the ``data.*`` keys of a recipe. Every dataset is a
source (:mod:`trainkit.data.sources`): its labels are known up front, so splits are index
arrays over them; in-memory sources are standardized once on the host, file sources are read
per sample in DataLoader workers and standardized on the training device after the transfer
(:meth:`DataModule.on_after_batch_transfer`).
"""

from __future__ import annotations

import os
from functools import cached_property
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from trainkit.data.augment import AugmentedImages, check_augment
from trainkit.data.datasets import ArrayData
from trainkit.data.layout import Layout, file_layout, memory_layout
from trainkit.data.loader import EpochSampler, ResumableLoader
from trainkit.data.memory import MemoryLoader, batch_augment, check_loader, device_tensors
from trainkit.data.mixing import BatchMixer
from trainkit.data.resolve import source_loader
from trainkit.data.samples import ArrayImages, CheckedLoader, Collate, HostStandardized, SourceSamples, sampled_stats
from trainkit.data.sources import kind_of
from trainkit.data.splits import SPLITS, check_inputs, check_labels, kfold_split, stratified_split
from trainkit.data.stats import Standardize, given_stats, standardization_stats
from trainkit.data.tables import Table
from trainkit.errors import ConfigError
from trainkit.optim.ramp import check_batch_ramp, ramped_batch_size
from trainkit.registry import check_kwargs

__all__ = ["SPLITS", "DataModule", "kfold_split", "standardization_stats", "stratified_split"]


class _DropLastMemoryLoader(MemoryLoader):
    """``data.drop_last`` on the memory path: its batches are the first ``len(self)``."""

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size



class DataModule(pl.LightningDataModule):
    """Splits, standardization and loaders for a source.

    Args:
        dataset: dataset registry name (``trainkit list datasets``), or the class path of a
            callable returning your own map-style Dataset (:mod:`trainkit.data.user`).
        batch_size: samples per batch per device.
        val_fraction: fraction of the data held out for validation (stratified).
        test_fraction: fraction held out for the final test (stratified); only
            ``trainkit test`` evaluates it.
        split_seed: seed of the splits, separate from ``seed_everything`` so that runs with
            different training seeds share the same held-out data.
        num_workers: DataLoader worker processes per device.
        pin_memory: page-locked host memory for faster copies to a GPU (``null``: on
            when training on a GPU).
        persistent_workers: keep workers alive between epochs (when ``num_workers > 0``).
        batch_ramp: ``{milestones: [epochs], factor: 2}``: multiply the training batch by
            ``factor`` at each milestone epoch instead of decaying the lr (``null``: off).
        root: folder of ``image_folder`` and the torchvision sets; file of ``table``.
        download: let a torchvision set download its files into ``root``.
        dataset_args: further keyword arguments of the dataset (``trainkit list datasets``),
            e.g. ``{shape: [3, 16, 16], num_classes: 4}`` for ``synthetic``.
        folds: k of stratified k-fold cross-validation (``null``: one split by ``val_fraction``);
            the test split is held out first, fold ``fold`` of the rest is the val split.
        fold: which fold is the val split, ``0 <= fold < folds``.
        whiten: PCA-whiten tables after standardization (fitted on the training split only).
        augment: ``{train: SPEC, eval: SPEC}``, each ``null``, a preset (``trainkit list
            augmentations``) or an albumentations ``A.to_dict`` pipeline; images only.
        mix: batch mixing ``{mixup_alpha, cutmix_alpha, switch_prob, prob}`` on the training
            batches (loss on soft targets, metrics on the hard labels).
        seed: seed of the augmentation and mixing streams; linked from ``seed_everything``.
        standardize: standardize inputs with the training split's statistics; ``false`` feeds
            them raw (for data already scaled; ``trainkit doctor`` warns when they are not).
        stats_sample: training images of a file source the statistics are computed from (a
            seeded sample; ``null``: all); in-memory sources always use the whole split.
        mean: per channel (or feature) means in the ``[0, 1]`` scale of the inputs instead of
            computed ones (with ``std``), or the name of a set (``imagenet``, ``cifar10``).
        std: per channel (or feature) standard deviations to go with a list ``mean``.
        permute_labels: shuffle the labels across samples before splitting (a randomization
            test: a model that still fits the training split memorizes; nothing generalizes).
        loader: ``dataloader`` (per-sample loading, any augmentation) or ``memory`` (the fast
            path for data that fit in memory: splits kept as tensors on the training device,
            batches sliced in the same order, batched flip and pad-crop; trainkit.data.memory).
        drop_last: drop each epoch's last, short training batch (static shapes for
            ``model.compile``); ``null``: on when compiling, off otherwise.
    """

    def __init__(
        self,
        dataset: str = "digits",
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 0,
        num_workers: int = 2,
        pin_memory: bool | None = None,
        persistent_workers: bool = True,
        batch_ramp: dict[str, Any] | None = None,
        root: str | None = None,
        download: bool = False,
        dataset_args: dict[str, Any] | None = None,
        folds: int | None = None,
        fold: int = 0,
        whiten: bool = False,
        augment: dict[str, Any] | None = None,
        mix: dict[str, float] | None = None,
        seed: int = 0,
        standardize: bool = True,
        permute_labels: bool = False,
        loader: str = "dataloader",
        stats_sample: int | None = 1000,
        mean: list[float] | str | None = None,
        std: list[float] | None = None,
        drop_last: bool | None = None,
    ):
        super().__init__()
        self.loader = check_loader(loader)
        self.drop_last = drop_last  # None until the runner resolves it (on when compiling)
        self._load = source_loader(dataset, dataset_args, root, download)
        if folds is not None and (folds < 2 or not 0 <= fold < folds):
            raise ConfigError(f"need folds >= 2 and 0 <= fold < folds, got folds={folds}, fold={fold}", "data.folds")
        self.augment = check_augment(augment)
        self.mixer = None
        if mix:
            check_kwargs(BatchMixer, mix, "data.mix", skip=("seed",))
            self.mixer = BatchMixer(**mix, seed=seed)
        if batch_size < 1:
            raise ConfigError(f"must be >= 1, got {batch_size}", "data.batch_size")
        for key, frac in (("data.val_fraction", val_fraction), ("data.test_fraction", test_fraction)):
            if not 0 <= frac < 1:
                raise ConfigError(f"must be in [0, 1), got {frac}", key)
        if val_fraction + test_fraction >= 1:
            raise ConfigError(
                f"val_fraction + test_fraction must leave training data, got {val_fraction} + {test_fraction}",
                "data.val_fraction",
            )
        if num_workers < 0:
            raise ConfigError(f"must be >= 0, got {num_workers}", "data.num_workers")
        if stats_sample is not None and stats_sample < 1:
            raise ConfigError(f"must be >= 1 or null (all), got {stats_sample}", "data.stats_sample")
        self.stats_sample, self.given = stats_sample, (mean, std)
        self.dataset_name = dataset
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.batch_ramp = check_batch_ramp(batch_ramp)
        self.folds, self.fold, self.whiten, self.seed = folds, fold, whiten, seed
        self.standardize, self.permute_labels = standardize, permute_labels
        if self.loader == "memory" and self.augment["eval"] is not None:
            raise ConfigError("data.loader: memory evaluates without augmentation; set eval: null", "data.augment.eval")
        self.memory_augment: Any = None
        self._on_device: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self.splits: dict[str, Dataset] = {}
        self.whitener: Any = None
        self.standardizer: Standardize | None = None  # file sources: applied on the device
        self.table: Table | None = None
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    @cached_property
    def data(self) -> Any:
        """The source (:mod:`trainkit.data.sources`), loaded once; a table encoded with the
        categories of its training split."""
        source = self._load()
        if isinstance(source, Table):
            self.table = source
            return source.fit(self._split(source.y, own_test=False)["train"])
        return source

    @property
    def kind(self) -> str:
        """The source's kind: ``memory``, ``files`` or ``streaming``."""
        return kind_of(self.data)

    @property
    def num_classes(self) -> int:
        return len(self.data.classes)

    @cached_property
    def layout(self) -> Layout:
        """The model's input shape, the pipelines and how images reach that shape."""
        build = memory_layout if self.kind == "memory" else file_layout
        return build(self.data, self.augment, self.seed)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.layout.shape

    @property
    def pipelines(self) -> dict[str, Any]:
        return self.layout.pipelines

    def _split(self, y: np.ndarray, own_test: bool) -> dict[str, np.ndarray]:
        # the dataset's own test split replaces the stratified one
        test_fraction = 0.0 if own_test else self.test_fraction
        if self.folds:
            return kfold_split(y, test_fraction, self.folds, self.fold, self.split_seed)
        return stratified_split(y, self.val_fraction, test_fraction, self.split_seed)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if self.kind == "streaming":  # splits cut when packing (trainkit.data.streaming)
            from trainkit.data.streaming import setup_streaming

            return setup_streaming(self)
        data = self.data
        check_labels(data, self.dataset_name)
        check_inputs(data, self.dataset_name, "data.root" if self.dataset_name == "image_folder" else "data.dataset")
        self._check_data_options(data)
        idx = self._split(data.y, own_test=data.test is not None)
        y = np.random.default_rng(self.split_seed).permutation(data.y) if self.permute_labels else data.y
        # (source part, indices into it, labels) per split
        parts = {s: (data, idx[s], y[idx[s]]) for s in SPLITS}
        if data.test is not None:
            parts["test"] = (data.test, np.arange(len(data.test.y)), np.asarray(data.test.y))
        self.indices = {s: p[1] for s, p in parts.items()}
        layout = self.layout
        if self.kind == "memory":
            self.arrays = {s: (src.x[i], lab) for s, (src, i, lab) in parts.items()}  # raw splits (in memory)
        self.mean, self.std = self._statistics(parts["train"])
        if self.whiten:
            from sklearn.decomposition import PCA

            self.whitener = PCA(whiten=True, random_state=0).fit((self.arrays["train"][0] - self.mean) / self.std)
        if self.kind != "memory":
            self.standardizer = Standardize(self.mean, self.std)
        if self.loader == "memory" and len(layout.shape) == 3:
            c, h, w = layout.shape
            fill = torch.from_numpy((-self.mean / self.std).reshape(-1).astype(np.float32))
            self.memory_augment = batch_augment(layout.pipelines["train"], h, w, fill)
        for split, part in parts.items():
            self.splits[split] = self._dataset(split, *part)
        n_train = len(parts["train"][2])
        if n_train < self.batch_size:
            raise ConfigError(
                f"{self.batch_size} is larger than the training split ({n_train} samples of {self.dataset_name})",
                "data.batch_size",
            )
        if self.batch_ramp and n_train < (largest := ramped_batch_size(self.batch_size, *self.batch_ramp, 1 << 30)):
            raise ConfigError(f"ramps the batch to {largest}, more than the training split ({n_train})", "data.batch_ramp")

    def _statistics(self, train: tuple[Any, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Standardization statistics of the training split only (val/test must not leak into
        preprocessing): given in the recipe, of the whole split (memory), or of a sample (files)."""
        shape = self.layout.shape
        given = given_stats(*self.given, shape, self.data.max_value)
        if not self.standardize:
            view = (-1, 1, 1) if len(shape) == 3 else shape
            return np.zeros(shape[0], np.float32).reshape(view), np.ones(shape[0], np.float32).reshape(view)
        if given is not None:
            return given
        if self.kind == "memory":
            return standardization_stats(self.arrays["train"][0])
        source, idx, labels = train
        n = len(idx) if self.stats_sample is None else min(self.stats_sample, len(idx))
        pick = np.sort(np.random.default_rng(self.split_seed).permutation(len(idx))[:n])
        hw = tuple(shape[1:]) if len(shape) == 3 else None
        plain = SourceSamples(source, idx[pick], labels[pick], None, self.seed, hw)
        return sampled_stats(plain, shape, self.num_workers, getattr(source, "skip_corrupt", False))

    def _check_data_options(self, data: Any) -> None:
        if not data.is_image:
            for key, on in (("data.augment", any(self.augment.values())), ("data.mix.cutmix_alpha", self.mixer and self.mixer.cutmix_alpha)):
                if on:
                    raise ConfigError(f"needs images; {self.dataset_name} is a table of shape {self.input_shape}", key)
        elif self.whiten:
            raise ConfigError(f"PCA whitening is for tables; {self.dataset_name} holds images", "data.whiten")
        if self.whiten and self.kind != "memory":
            raise ConfigError(f"PCA whitening needs an in-memory table; {self.dataset_name} is read from files", "data.whiten")

    def _dataset(self, split: str, source: Any, idx: np.ndarray, y: np.ndarray) -> Dataset:
        """The split as the loaders read it: standardized tensors (memory, no pipeline),
        per-sample augmentation of in-memory images, or per-sample reading of a file source."""
        which = "train" if split == "train" else "eval"
        pipeline = self.layout.pipelines[which]
        if self.kind != "memory":
            samples = SourceSamples(source, idx, y, pipeline, self.seed, self.layout.resize[which])
            return self._materialized(samples) if self.loader == "memory" else samples
        x = source.x[idx]
        if pipeline is None or self.loader == "memory":  # memory: batched ops on the device instead
            z = (x - self.mean) / self.std
            if self.whitener is not None:
                z = self.whitener.transform(z.reshape(len(z), -1))
            return TensorDataset(torch.from_numpy(z.astype(np.float32)), torch.from_numpy(y))
        return AugmentedImages(x, y, pipeline, source.max_value, self.mean, self.std, self.seed, train=split == "train")

    def _materialized(self, samples: SourceSamples) -> TensorDataset:
        """A file split decoded whole (``data.loader: memory``): standardized float tensors."""
        loader = CheckedLoader(samples, batch_size=256, num_workers=self.num_workers, collate_fn=self._collate("eval"))
        xs, ys = zip(*((self.standardizer(x), y) for x, y in loader)) if len(samples) else ((), ())
        return TensorDataset(torch.cat(xs), torch.cat(ys))

    def _collate(self, split: str) -> Collate | None:
        if self.kind == "memory":
            return None
        return Collate(getattr(self.data, "skip_corrupt", False), f"data.augment.{'train' if split == 'train' else 'eval'}")

    def eval_dataset(self, x: np.ndarray, y: np.ndarray | None = None) -> Dataset:
        """Raw inputs (dataset units) preprocessed as val/test are: training-split statistics,
        whitening, eval pipeline. ``y``: labels, or ``None`` (zeros) for unlabelled inputs."""
        y = np.zeros(len(x), dtype=np.int64) if y is None else y
        data = ArrayData(np.asarray(x, dtype=np.float32), y, self.data.classes, self.data.max_value)
        if self.kind == "memory":
            return self._dataset("eval", data, np.arange(len(y)), y)
        images = ArrayImages(np.clip(np.rint(data.x), 0, 255).astype(np.uint8))  # files decode to 8-bit pixels
        return self.eval_split(None, SourceSamples(images, np.arange(len(y)), y, self.layout.pipelines["eval"],
                                                   self.seed, self.layout.resize["eval"]))

    def eval_split(self, split: str | None, samples: Dataset | None = None, indices: np.ndarray | None = None) -> Dataset:
        """Split ``split`` (positions ``indices`` of it) preprocessed as validation data, yielding
        standardized float inputs on the host whatever the source: for loops that feed the
        model themselves (predictions, the fit verdict's training subset)."""
        if self.kind == "streaming" and samples is None:
            from trainkit.data.streaming import streaming_eval_split

            return streaming_eval_split(self, split, indices)
        if samples is None:
            if self.kind == "memory" and split in getattr(self, "arrays", {}):
                samples = self.eval_dataset(*self.arrays[split])
            else:
                source = self.data.test if split == "test" and self.data.test is not None else self.data
                labels = np.asarray(self.splits[split].y)
                samples = SourceSamples(source, self.indices[split], labels, self.layout.pipelines["eval"], self.seed,
                                        self.layout.resize["eval"])
        if indices is not None:
            samples = Subset(samples, np.asarray(indices).tolist())
        if self.standardizer is None:
            return samples
        return HostStandardized(samples, self.standardizer, getattr(self.data, "skip_corrupt", False))

    def prepare_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """A batch of inputs as the model takes them, on the batch's device: file sources'
        uint8 images (or raw floats) standardized; in-memory inputs are already."""
        return self.standardizer(x) if self.standardizer is not None and self.loader != "memory" else x

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # on the training device: file sources' uint8 batches standardized, then (training
        # batches only) mixing, its draws a function of (seed, epoch, batch index)
        x, y, *rest = batch
        x = self.prepare_inputs(x)
        if self.mixer is not None and self.trainer is not None and self.trainer.training:
            loop = self.trainer.fit_loop.epoch_loop
            # this batch's index in the epoch: Lightning counts it ready right after this hook
            k = loop.batch_progress.current.ready
            x, soft = self.mixer(x, y, self.num_classes, (self.trainer.current_epoch, self.trainer.global_rank, k))
            return x, y, soft
        return (x, y, *rest)

    def _loader(self, split: str, shuffle: bool, batch_size: int | None = None) -> DataLoader:
        if self.loader == "memory":
            return self._memory_loader(split, shuffle, batch_size or self.batch_size)
        pin = self.pin_memory
        if pin is None:
            pin = bool(self.trainer is not None and self.trainer.accelerator.__class__.__name__ == "CUDAAccelerator")
        if self.kind == "streaming":  # the shards' own resumable loader, by rank and worker
            from trainkit.data.streaming import streaming_loader

            return streaming_loader(self, split, shuffle, batch_size or self.batch_size, pin)
        kwargs: dict = dict(
            batch_size=batch_size or self.batch_size,
            num_workers=self.num_workers,
            pin_memory=pin,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            collate_fn=self._collate(split),
        )
        if not shuffle:
            # a private generator: evaluation loaders leave the global random stream untouched
            return CheckedLoader(self.splits[split], generator=torch.Generator().manual_seed(self.seed), **kwargs)
        # datasets that draw per sample get (epoch, index) keys: workers need no epoch state
        keyed = not isinstance(self.splits[split], TensorDataset)
        return ResumableLoader(self.splits[split], sampler=self._sampler(split, keyed), progress=self._batches_processed,
                               drop_last=bool(self.drop_last), **kwargs)

    def _sampler(self, split: str, keyed: bool = False) -> EpochSampler:
        # Seeded as Lightning's own injected sampler; Lightning calls set_epoch every epoch.
        if self.trainer is not None:
            world, rank = self.trainer.world_size, self.trainer.global_rank
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        else:
            world, rank = 1, 0
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        return EpochSampler(self.splits[split], num_replicas=world, rank=rank, seed=seed, keyed=keyed)

    def _memory_loader(self, split: str, shuffle: bool, batch_size: int) -> MemoryLoader:
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        key = (split, str(device))
        if key not in self._on_device:  # moved once per run, not per epoch
            self._on_device[key] = device_tensors(self.splits[split], device)
        x, y = self._on_device[key]
        if not shuffle:
            return MemoryLoader(x, y, batch_size)
        cls = _DropLastMemoryLoader if self.drop_last else MemoryLoader
        return cls(x, y, batch_size, self._sampler(split), self._batches_processed, self.memory_augment, self.seed)

    def train_batches(self, world_size: int) -> int:
        """Training batches per epoch on each of ``world_size`` ranks (the sampler pads the split
        to a multiple of the world size), at the first epoch's batch size."""
        if self.kind == "streaming":
            from trainkit.data.streaming import streaming_train_batches

            return streaming_train_batches(self, world_size)
        per_rank = -(-len(self.splits["train"]) // world_size)
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def _batches_processed(self) -> int:
        """Training batches the trainer has processed in its current epoch (resume position)."""
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def train_dataloader(self) -> DataLoader:
        if self.batch_ramp is None or self.trainer is None:
            return self._loader("train", shuffle=True)
        # Lightning asks for a new train loader each epoch only with this flag (a public
        # Trainer attribute); the ramp needs it, so it turns it on rather than ask for a 2nd key
        self.trainer.reload_dataloaders_every_n_epochs = 1
        size = ramped_batch_size(self.batch_size, *self.batch_ramp, self.trainer.current_epoch)
        return self._loader("train", shuffle=True, batch_size=size)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
