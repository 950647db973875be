"""Splits and standardization of the data module on the embedded data."""

from __future__ import annotations

import numpy as np
import pytest

from trainkit.data.datamodule import DataModule, stratified_split
from trainkit.data.datasets import ArrayData
from trainkit.errors import ConfigError


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


def test_synthetic_data_has_a_learnable_signal():
    from sklearn.linear_model import LogisticRegression

    from trainkit.data.datasets import synthetic

    table = synthetic(shape=[10], num_classes=3, size=300, noise=0.3)
    assert table.x.shape == (300, 10) and np.bincount(table.y).tolist() == [100, 100, 100]
    assert LogisticRegression(max_iter=500).fit(table.x[:200], table.y[:200]).score(table.x[200:], table.y[200:]) > 0.9
    img = synthetic(shape=[3, 6, 5], num_classes=4, size=40)
    assert img.is_image and img.input_shape == (3, 6, 5) and len(img.classes) == 4


def test_kfold_folds_partition_the_non_test_data_stratified():
    dm = DataModule(num_workers=0)
    y = dm.data.y
    from trainkit.data.datamodule import kfold_split

    parts = [kfold_split(y, 0.15, folds=5, fold=k, seed=0) for k in range(5)]
    assert all(np.array_equal(p["test"], parts[0]["test"]) for p in parts), "the test split is held out once"
    vals = np.concatenate([p["val"] for p in parts])
    rest = np.setdiff1d(np.arange(len(y)), parts[0]["test"])
    assert np.array_equal(np.sort(vals), rest), "the val folds partition the rest"
    for p in parts:
        assert not set(p["train"]) & set(p["val"]) and len(p["train"]) + len(p["val"]) == len(rest)
        expected = np.bincount(y[rest], minlength=10) / 5
        assert np.all(np.abs(np.bincount(y[p["val"]], minlength=10) - expected) <= 1)
    dm = DataModule(num_workers=0, folds=5, fold=2)
    dm.setup()
    assert len(dm.splits["val"]) == len(parts[2]["val"])


def test_own_test_split_is_used_and_not_cut_from_the_data():
    x = np.random.default_rng(0).random((100, 4), dtype=np.float32)
    y = np.arange(100) % 2
    test = ArrayData(x[:10] + 5, y[:10], ("a", "b"))
    dm = DataModule(num_workers=0, batch_size=8, val_fraction=0.2, test_fraction=0.3)
    dm.__dict__["data"] = ArrayData(x, y, ("a", "b"), test=test)
    dm.setup()
    assert len(dm.splits["train"]) + len(dm.splits["val"]) == 100 and len(dm.splits["test"]) == 10
    expected = (test.x - dm.mean) / dm.std
    np.testing.assert_allclose(dm.splits["test"].tensors[0].numpy(), expected, rtol=1e-5)


def test_pca_whitening_is_fitted_on_the_training_split():
    dm = DataModule(dataset="breast_cancer", num_workers=0, whiten=True)
    dm.setup()
    x = dm.splits["train"].tensors[0].numpy().astype(np.float64)
    np.testing.assert_allclose(np.cov(x, rowvar=False), np.eye(30), atol=5e-3)  # float32 inputs
    val = dm.splits["val"].tensors[0].numpy()
    assert np.abs(np.cov(val, rowvar=False) - np.eye(30)).max() > 0.05, "val is transformed, not re-fitted"
    with pytest.raises(ConfigError, match="data.whiten"):
        DataModule(num_workers=0, whiten=True).setup()


def test_train_loader_reshuffles_every_epoch_and_eval_loaders_do_not():
    import torch

    dm = DataModule(num_workers=0)
    dm.setup()
    loader = dm.train_dataloader()

    def epoch(e: int) -> torch.Tensor:
        loader.sampler.set_epoch(e)  # as Lightning does before every epoch
        return torch.cat([y for _, y in loader])

    a, b = epoch(0), epoch(1)
    assert not torch.equal(a, b) and torch.equal(a.sort().values, b.sort().values)
    assert torch.equal(epoch(0), a), "the order depends on the seed and the epoch only"
    v1, v2 = (torch.cat([y for _, y in dm.val_dataloader()]) for _ in range(2))
    assert torch.equal(v1, v2)


@pytest.mark.parametrize("bad", [10, -1])
def test_labels_out_of_range_are_refused_naming_the_value(bad):
    dm = DataModule(num_workers=0)
    y = dm.data.y.copy()
    y[7] = bad
    dm.__dict__["data"] = ArrayData(dm.data.x, y, dm.data.classes)
    with pytest.raises(ConfigError, match=rf"data.dataset: digits: label {bad} is out of range.*\[0, 10\)"):
        dm.setup()


def test_dataset_args_are_checked_against_the_dataset():
    with pytest.raises(ConfigError, match="data.root: dataset 'digits' takes no root.*image_folder"):
        DataModule(root="/data")
    with pytest.raises(ConfigError, match="data.dataset_args.*'shap'.*did you mean 'shape'"):
        DataModule(dataset="synthetic", dataset_args={"shap": [3]})


def test_two_gloo_ranks_see_disjoint_shards_covering_the_split_in_a_new_order_each_epoch(tmp_path):
    import json

    import torch.multiprocessing as mp
    from data_workers import shard_worker
    from test_metrics import free_port

    out = tmp_path / "seen.json"
    mp.spawn(shard_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    result = json.loads(out.read_text())
    (r0e0, r0e1), (r1e0, r1e1) = result["seen"]
    n = result["n_train"]
    assert n % 2 == 0, "an even split, so DistributedSampler needs no padding duplicates"
    for a, b in ((r0e0, r1e0), (r0e1, r1e1)):
        assert len(a) == len(b) == n // 2 and len(set(a)) == n // 2
        assert not set(a) & set(b) and set(a) | set(b) == set(range(n))
    assert r0e0 != r0e1 and set(r0e0) != set(r0e1), "a fresh shuffle (and shard) each epoch"
