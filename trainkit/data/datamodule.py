"""``DataModule``: resolves a dataset by name, splits it, standardizes it, and loads batches.

Its typed ``__init__`` arguments are the ``data.*`` keys of a recipe.
"""

from __future__ import annotations

import inspect
import os
from functools import cached_property
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from trainkit.data.augment import PIPELINE_SPLITS, AugmentedImages, build_pipeline, check_augment
from trainkit.data.datasets import DATASETS, ArrayData
from trainkit.data.loader import EpochSampler, ResumableLoader
from trainkit.data.memory import MemoryLoader, batch_augment, check_loader, device_tensors
from trainkit.data.mixing import BatchMixer
from trainkit.arguments import check_types
from trainkit.errors import ConfigError
from trainkit.optim.ramp import check_batch_ramp, ramped_batch_size
from trainkit.registry import check_kwargs

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


def standardization_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per channel (images ``N,C,H,W``) or per feature (tables ``N,F``).

    Constant channels get std 1, so they map to zero instead of dividing by zero.
    """
    axes = (0, 2, 3) if x.ndim == 4 else (0,)
    mean = x.mean(axis=axes, keepdims=True)
    std = x.std(axis=axes, keepdims=True)
    std[std < 1e-8] = 1.0
    return mean.squeeze(0), std.squeeze(0)


def check_labels(data: ArrayData, name: str) -> None:
    """Labels must be integers in ``[0, len(classes))``, in every part of the dataset."""
    for part in (data, data.test):
        if part is None:
            continue
        y = part.y
        if len(y) != len(part.x):
            raise ConfigError(f"{name}: {len(part.x)} inputs but {len(y)} labels", "data.dataset")
        bad = y[(y < 0) | (y >= len(data.classes))] if np.issubdtype(y.dtype, np.integer) else y
        if len(bad):
            raise ConfigError(
                f"{name}: label {bad[0].item()!r} is out of range; labels must be integers in [0, {len(data.classes)})",
                "data.dataset",
            )


def check_inputs(data: ArrayData, name: str, key: str) -> None:
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


class DataModule(pl.LightningDataModule):
    """Splits, standardization and loaders for a dataset from the registry.

    Args:
        dataset: dataset registry name (``trainkit list datasets``).
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
        root: folder of ``image_folder`` and the torchvision sets.
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
        permute_labels: shuffle the labels across samples before splitting (a randomization
            test: a model that still fits the training split memorizes; nothing generalizes).
        loader: ``dataloader`` (per-sample loading, any augmentation) or ``memory`` (the fast
            path for data that fit in memory: splits kept as tensors on the training device,
            batches sliced in the same order, batched flip and pad-crop; trainkit.data.memory).
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
    ):
        super().__init__()
        self.loader = check_loader(loader)  # before `loader` below names the dataset's loader
        try:
            loader = DATASETS.get(dataset)
        except ConfigError as e:
            raise e.with_key("data.dataset") from None
        load_args = dict(dataset_args or {})
        try:
            check_kwargs(loader, load_args, f"dataset {dataset!r}", skip=("root", "download"))
            check_types(loader, load_args, "data.dataset_args")
        except ConfigError as e:
            raise e.with_key("data.dataset_args") from None
        for key, value in (("root", root), ("download", download)):
            if value not in (None, False):
                users = [n for n in DATASETS.names() if key in inspect.signature(DATASETS.get(n)).parameters]
                if dataset not in users:
                    raise ConfigError(f"dataset {dataset!r} takes no {key} (datasets that do: {', '.join(users)})", f"data.{key}")
                load_args[key] = value
        self._load = lambda: loader(**load_args)
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
        self.pipelines: dict[str, Any] = {}
        self.whitener: Any = None
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    @cached_property
    def data(self) -> ArrayData:
        """The whole dataset, loaded once (and checked: the model is sized by its classes)."""
        data = self._load()
        check_inputs(data, self.dataset_name, "data.root" if self.dataset_name == "image_folder" else "data.dataset")
        return data

    @property
    def num_classes(self) -> int:
        return len(self.data.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.data.input_shape

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        data = self.data
        check_labels(data, self.dataset_name)
        self._check_data_options(data)
        # the dataset's own test split replaces the stratified one
        test_fraction = 0.0 if data.test is not None else self.test_fraction
        if self.folds:
            idx = kfold_split(data.y, test_fraction, self.folds, self.fold, self.split_seed)
        else:
            idx = stratified_split(data.y, self.val_fraction, test_fraction, self.split_seed)
        y = np.random.default_rng(self.split_seed).permutation(data.y) if self.permute_labels else data.y
        arrays = {s: (data.x[idx[s]], y[idx[s]]) for s in SPLITS}
        if data.test is not None:
            arrays["test"] = (data.test.x, data.test.y)
        self.arrays = arrays  # raw splits, for eval_dataset (predict, the fit verdict)
        # statistics of the (un-augmented) training split only: val/test must not leak into preprocessing
        self.mean, self.std = standardization_stats(arrays["train"][0])
        if not self.standardize:
            self.mean, self.std = np.zeros_like(self.mean), np.ones_like(self.std)
        if self.whiten:
            from sklearn.decomposition import PCA

            self.whitener = PCA(whiten=True, random_state=0).fit((arrays["train"][0] - self.mean) / self.std)
        h, w = data.x.shape[-2:]
        self.pipelines = {s: build_pipeline(self.augment[s], h, w, self.seed, f"data.augment.{s}") for s in PIPELINE_SPLITS}
        if self.loader == "memory":
            fill = torch.from_numpy((-self.mean / self.std).reshape(-1).astype(np.float32)) if data.is_image else None
            self.memory_augment = batch_augment(self.pipelines["train"], h, w, fill)
        for split in SPLITS:
            self.splits[split] = self._dataset(split, *arrays[split], data.max_value)
        n_train = len(arrays["train"][1])
        if n_train < self.batch_size:
            raise ConfigError(
                f"{self.batch_size} is larger than the training split ({n_train} samples of {self.dataset_name})",
                "data.batch_size",
            )
        if self.batch_ramp and n_train < (largest := ramped_batch_size(self.batch_size, *self.batch_ramp, 1 << 30)):
            raise ConfigError(f"ramps the batch to {largest}, more than the training split ({n_train})", "data.batch_ramp")

    def _check_data_options(self, data: ArrayData) -> None:
        if not data.is_image:
            for key, on in (("data.augment", any(self.augment.values())), ("data.mix.cutmix_alpha", self.mixer and self.mixer.cutmix_alpha)):
                if on:
                    raise ConfigError(f"needs images; {self.dataset_name} is a table of shape {data.input_shape}", key)
        elif self.whiten:
            raise ConfigError(f"PCA whitening is for tables; {self.dataset_name} holds images", "data.whiten")

    def _dataset(self, split: str, x: np.ndarray, y: np.ndarray, max_value: float) -> Dataset:
        """Standardized tensors, or per-sample augmentation when the split has a pipeline."""
        pipeline = self.pipelines["train" if split == "train" else "eval"]
        if pipeline is None or self.loader == "memory":  # memory: batched ops on the device instead
            z = (x - self.mean) / self.std
            if self.whitener is not None:
                z = self.whitener.transform(z.reshape(len(z), -1))
            return TensorDataset(torch.from_numpy(z.astype(np.float32)), torch.from_numpy(y))
        ds = AugmentedImages(x, y, pipeline, max_value, self.mean, self.std, reseed=None if split == "train" else self.seed)
        if len(ds) and tuple(ds[0][0].shape) != x.shape[1:]:
            key = f"data.augment.{'train' if split == 'train' else 'eval'}"
            raise ConfigError(f"the pipeline turns {x.shape[1:]} images into {tuple(ds[0][0].shape)}; it must keep the size", key)
        return ds

    def eval_dataset(self, x: np.ndarray, y: np.ndarray | None = None) -> Dataset:
        """Raw inputs (dataset units) preprocessed as val/test are: training-split statistics,
        whitening, eval pipeline. ``y``: labels, or ``None`` (zeros) for unlabelled inputs."""
        y = np.zeros(len(x), dtype=np.int64) if y is None else y
        return self._dataset("eval", np.asarray(x, dtype=np.float32), y, self.data.max_value)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # mixing runs here, on the training device, on training batches only
        if self.mixer is not None and self.trainer is not None and self.trainer.training:
            x, y = batch
            x, soft = self.mixer(x, y, self.num_classes)
            return x, y, soft
        return batch

    def _loader(self, split: str, shuffle: bool, batch_size: int | None = None) -> DataLoader:
        if self.loader == "memory":
            return self._memory_loader(split, shuffle, batch_size or self.batch_size)
        pin = self.pin_memory
        if pin is None:
            pin = bool(self.trainer is not None and self.trainer.accelerator.__class__.__name__ == "CUDAAccelerator")
        kwargs: dict = dict(
            batch_size=batch_size or self.batch_size,
            num_workers=self.num_workers,
            pin_memory=pin,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )
        if not shuffle:
            # a private generator: evaluation loaders leave the global random stream untouched
            return DataLoader(self.splits[split], generator=torch.Generator().manual_seed(self.seed), **kwargs)
        return ResumableLoader(self.splits[split], sampler=self._sampler(split), progress=self._batches_processed, **kwargs)

    def _sampler(self, split: str) -> EpochSampler:
        # Seeded as Lightning's own injected sampler; Lightning calls set_epoch every epoch.
        if self.trainer is not None:
            world, rank = self.trainer.world_size, self.trainer.global_rank
        elif torch.distributed.is_available() and torch.distributed.is_initialized():
            world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
        else:
            world, rank = 1, 0
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        return EpochSampler(self.splits[split], num_replicas=world, rank=rank, seed=seed)

    def _memory_loader(self, split: str, shuffle: bool, batch_size: int) -> MemoryLoader:
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        key = (split, str(device))
        if key not in self._on_device:  # moved once per run, not per epoch
            self._on_device[key] = device_tensors(self.splits[split], device)
        x, y = self._on_device[key]
        if not shuffle:
            return MemoryLoader(x, y, batch_size)
        return MemoryLoader(x, y, batch_size, self._sampler(split), self._batches_processed, self.memory_augment, self.seed)

    def train_batches(self, world_size: int) -> int:
        """Training batches per epoch on each of ``world_size`` ranks (the sampler pads the split
        to a multiple of the world size), at the first epoch's batch size."""
        per_rank = -(-len(self.splits["train"]) // world_size)
        return -(-per_rank // self.batch_size)

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
