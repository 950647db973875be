"""Splits and standardization of the data module on the embedded data."""

from __future__ import annotations

import numpy as np
import pytest

from trainkit.data.datamodule import DataModule, stratified_split
from trainkit.data.datasets import ArrayData


@pytest.mark.parametrize("dataset", ["digits", "breast_cancer"])
def test_stratified_splits_keep_class_ratios_and_are_disjoint(dataset):
    dm = DataModule(dataset=dataset, num_workers=0)
    y = dm.data.y
    idx = stratified_split(y, 0.15, 0.15, seed=0)
    all_idx = np.concatenate([idx[s] for s in ("train", "val", "test")])
    assert len(all_idx) == len(y) == len(set(all_idx.tolist())), "splits are disjoint and complete"
    for split, ids in idx.items():
        counts = np.bincount(y[ids], minlength=dm.num_classes)
        expected = np.bincount(y, minlength=dm.num_classes) * len(ids) / len(y)
        assert np.all(np.abs(counts - expected) <= 1.0), (split, counts, expected)


def test_split_seed_changes_the_split_and_is_repeatable():
    y = DataModule(num_workers=0).data.y
    a, b, c = (stratified_split(y, 0.15, 0.15, seed=s) for s in (0, 0, 1))
    assert np.array_equal(a["test"], b["test"]) and not np.array_equal(a["test"], c["test"])


def test_standardization_uses_the_training_split_only():
    dm = DataModule(num_workers=0)
    dm.setup("fit")
    train_x = dm.splits["train"].tensors[0]
    # per channel mean 0, std 1 on the training split after standardization
    assert abs(float(train_x.mean())) < 1e-5 and abs(float(train_x.std()) - 1) < 1e-2

    # changing every val/test sample leaves the statistics untouched
    data = dm.data
    idx = stratified_split(data.y, 0.15, 0.15, seed=0)
    x = data.x.copy()
    x[np.concatenate([idx["val"], idx["test"]])] += 100.0
    other = DataModule(num_workers=0)
    other.__dict__["data"] = ArrayData(x, data.y, data.classes)
    other.setup("fit")
    np.testing.assert_array_equal(other.mean, dm.mean)
    np.testing.assert_array_equal(other.std, dm.std)
    assert float(other.splits["val"].tensors[0].mean()) > 10, "val data itself did change"


def test_tables_standardize_per_feature():
    dm = DataModule(dataset="breast_cancer", num_workers=0)
    dm.setup("fit")
    x = dm.splits["train"].tensors[0].numpy()
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(x.std(0), 1, atol=1e-3)
    assert dm.input_shape == (30,) and dm.num_classes == 2
