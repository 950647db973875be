"""``DataModule``: resolves a dataset by name, splits it, standardizes it, and loads batches.

Its typed ``__init__`` arguments are the ``data.*`` keys of a recipe.
"""

from __future__ import annotations

import os
from functools import cached_property
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from trainkit.data.datasets import DATASETS, ArrayData
from trainkit.data.loader import EpochSampler, ResumableLoader
from trainkit.errors import ConfigError
from trainkit.optim.ramp import check_batch_ramp, ramped_batch_size

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


def standardization_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std per channel (images ``N,C,H,W``) or per feature (tables ``N,F``).

    Constant channels get std 1, so they map to zero instead of dividing by zero.
    """
    axes = (0, 2, 3) if x.ndim == 4 else (0,)
    mean = x.mean(axis=axes, keepdims=True)
    std = x.std(axis=axes, keepdims=True)
    std[std < 1e-8] = 1.0
    return mean.squeeze(0), std.squeeze(0)


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
    ):
        super().__init__()
        try:
            self._load = DATASETS.get(dataset)
        except ConfigError as e:
            raise e.with_key("data.dataset") from None
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
        self.splits: dict[str, TensorDataset] = {}
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    @cached_property
    def data(self) -> ArrayData:
        """The whole dataset, loaded once."""
        return self._load()

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
        idx = stratified_split(data.y, self.val_fraction, self.test_fraction, self.split_seed)
        # statistics of the training split only: val/test must not leak into preprocessing
        self.mean, self.std = standardization_stats(data.x[idx["train"]])
        for split in SPLITS:
            x = (data.x[idx[split]] - self.mean) / self.std
            self.splits[split] = TensorDataset(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(data.y[idx[split]]))
        n_train = len(idx["train"])
        if n_train < self.batch_size:
            raise ConfigError(
                f"{self.batch_size} is larger than the training split ({n_train} samples of {self.dataset_name})",
                "data.batch_size",
            )
        if self.batch_ramp and n_train < (largest := ramped_batch_size(self.batch_size, *self.batch_ramp, 1 << 30)):
            raise ConfigError(f"ramps the batch to {largest}, more than the training split ({n_train})", "data.batch_ramp")

    def _loader(self, split: str, shuffle: bool, batch_size: int | None = None) -> DataLoader:
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
            return DataLoader(self.splits[split], **kwargs)
        # Seeded as Lightning's own injected sampler; Lightning calls set_epoch every epoch.
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        sampler = EpochSampler(self.splits[split], num_replicas=world, rank=rank, seed=seed)
        return ResumableLoader(self.splits[split], sampler=sampler, **kwargs)

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
