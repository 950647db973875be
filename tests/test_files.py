"""The lazy image_folder on PNG/JPEG files the tests write with OpenCV; torchvision sets on generated files."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import DEFAULT_RECIPE, QUIET, tree_digest

from trainkit.cli import main
from trainkit.data.datamodule import DataModule
from trainkit.data.files import image_folder
from trainkit.data.scan import scan_folder
from trainkit.errors import ConfigError

COLORS = {"blue": (255, 0, 0), "red": (0, 0, 255)}  # BGR, as OpenCV writes


def make_folder(root: Path, per_class: int = 6, size: int = 10) -> Path:
    for name, bgr in COLORS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = np.zeros((size, size, 3), np.uint8)
            img[:] = bgr
            img[0, 0] = (i, i, i)
            ext = ".png" if i % 2 else ".jpg"
            assert cv2.imwrite(str(root / name / f"{i}{ext}"), img)
    return root


def test_image_folder_scans_labels_and_sizes_and_decodes_rgb_on_demand(tmp_path):
    data = image_folder(str(make_folder(tmp_path / "imgs")))
    assert data.kind == "files" and data.classes == ("blue", "red") and data.max_value == 255
    assert data.y.tolist() == [0] * 6 + [1] * 6 and data.common_size() == (10, 10)
    images = np.stack([data.read(i) for i in range(12)])  # HWC RGB uint8
    assert images.shape == (12, 10, 10, 3) and images.dtype == np.uint8
    centre = images[:, 5, 5].astype(int)
    assert np.all(np.abs(centre[:6] - [0, 0, 255]) <= 12), "blue is RGB (0, 0, 255); JPEG is lossy"
    assert np.all(np.abs(centre[6:] - [255, 0, 0]) <= 12)
    np.testing.assert_array_equal(images[1, 0, 0], [1, 1, 1])  # 1.png: lossless
    grey = image_folder(str(tmp_path / "imgs"), channels=1)
    assert grey.read(0).shape == (10, 10)


def test_a_file_emptied_or_removed_after_the_scan_is_unreadable_not_a_crash(tmp_path):
    from trainkit.data.samples import SourceSamples, Unreadable

    data = image_folder(str(make_folder(tmp_path / "imgs")))
    Path(data.describe(3)).write_bytes(b"")  # OpenCV asserts on an empty buffer
    Path(data.describe(4)).unlink()
    samples = SourceSamples(data, np.arange(12), data.y, None, 0, None)
    assert samples[3] == Unreadable(data.describe(3)) and samples[4] == Unreadable(data.describe(4))
    x, y = samples[5]
    assert x.shape == (3, 10, 10) and x.dtype == torch.uint8 and y == 0


def test_corrupt_file_is_an_error_naming_it_or_a_logged_skip(tmp_path, caplog):
    root = make_folder(tmp_path / "imgs")
    bad = root / "red" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ConfigError, match=rf"data.root: cannot read image '{bad}'.*skip_corrupt"):
        image_folder(str(root))
    with caplog.at_level(logging.WARNING, logger="trainkit.data.files"):
        data = image_folder(str(root), skip_corrupt=True)
    assert len(data.y) == 12 and str(bad) in caplog.text


def test_empty_class_folder_and_mixed_sizes_are_errors_naming_the_path(tmp_path):
    root = make_folder(tmp_path / "imgs")
    (root / "green").mkdir()
    with pytest.raises(ConfigError, match=rf"class folder '{root / 'green'}' holds no image files"):
        image_folder(str(root))
    (root / "green").rmdir()
    cv2.imwrite(str(root / "red" / "big.png"), np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(ConfigError, match=r"big.png' is 20x20.*data.dataset_args.size"):
        DataModule(dataset="image_folder", root=str(root), num_workers=0, batch_size=4).setup()
    dm = DataModule(dataset="image_folder", root=str(root), dataset_args={"size": [10, 10]}, num_workers=0, batch_size=4)
    dm.setup()
    assert dm.input_shape == (3, 10, 10) and dm.layout.resize["eval"] == (10, 10)
    x, y = next(iter(dm.val_dataloader()))
    assert x.dtype == torch.uint8 and tuple(x.shape[1:]) == (3, 10, 10), "collated as uint8 at the model's size"


def test_train_test_layout_gives_the_own_test_split(tmp_path):
    make_folder(tmp_path / "d" / "train")
    make_folder(tmp_path / "d" / "test", per_class=2)
    data = image_folder(str(tmp_path / "d"))
    assert len(data.y) == 12 and data.test is not None and data.test.y.tolist() == [0, 0, 1, 1]


def test_the_file_index_is_cached_outside_the_folder_and_rescanned_when_a_file_is_added(tmp_path, monkeypatch):
    import trainkit.data.scan as scan

    root = make_folder(tmp_path / "imgs")
    before = tree_digest(root)
    headers = []
    real = scan.image_size
    monkeypatch.setattr(scan, "image_size", lambda p: headers.append(p) or real(p))
    first = scan_folder(root)
    assert len(headers) == 12
    again = scan_folder(root)
    assert len(headers) == 12, "a second start reads no header"
    assert np.array_equal(again.labels, first.labels) and [again.relpath(i) for i in range(12)] == [first.relpath(i) for i in range(12)]
    assert tree_digest(root) == before and list((tmp_path / "home" / ".cache" / "trainkit" / "image_index").glob("*.npz"))
    cv2.imwrite(str(root / "red" / "new.png"), np.zeros((10, 10, 3), np.uint8))
    assert len(scan_folder(root)) == 13 and len(headers) == 25, "an added file changes the folder: a rescan"


@pytest.mark.slow  # two fits, 2 workers
def test_a_file_that_fails_to_decode_in_a_worker_stops_the_run_naming_it(tmp_path, capsys):
    root = make_folder(tmp_path / "imgs", per_class=20)
    good = cv2.imencode(".png", np.zeros((10, 10, 3), np.uint8))[1].tobytes()
    for k in range(6):  # a valid header, then truncated: found only when decoded (some land in train or val)
        (root / "red" / f"zz{k}.png").write_bytes(good[:40])
    args = ["fit", "--config", str(DEFAULT_RECIPE), "--data.dataset=image_folder", f"--data.root={root}",
            "--data.batch_size=8", "--data.num_workers=2", "--data.mean=[0.5, 0.5, 0.5]", "--data.std=[0.25, 0.25, 0.25]",
            "--trainer.logger=false", "--trainer.max_epochs=1", *QUIET]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"data.root: cannot read image '{root / 'red' / 'zz'}" in err and "Traceback" not in err
    assert main([*args, "--data.dataset_args={skip_corrupt: true}", "--run.name=skip"]) == 0


def test_image_folder_trains_from_the_recipe_and_bad_files_exit_2(tmp_path, capsys):
    root = make_folder(tmp_path / "imgs", per_class=20)
    args = ["fit", "--config", str(DEFAULT_RECIPE), "--data.dataset=image_folder", f"--data.root={root}",
            "--data.batch_size=8", "--data.augment={train: cifar}", *QUIET]
    assert main([*args, "--trainer.fast_dev_run=true"]) == 0  # the recipe's 2 workers, W&B offline
    (root / "red" / "zz.jpg").write_bytes(b"garbage")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "data.root" in err and str(root / "red" / "zz.jpg") in err and "Traceback" not in err
    assert main([*args, "--data.dataset_args={skip_corrupt: true}", "--trainer.fast_dev_run=true"]) == 0
    assert main([*args[:3], "--data.dataset=image_folder", f"--data.root={tmp_path / 'nope'}"]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_torchvision_sets_without_torchvision_say_which_extra(capsys):
    try:
        import torchvision  # noqa: F401
    except ImportError:
        assert main(["fit", "--config", str(DEFAULT_RECIPE), "--data.dataset=cifar10", "--data.root=x"]) == 2
        assert "trainkit[vision]" in capsys.readouterr().err
    else:
        pytest.skip("torchvision is installed")


def test_cifar10_reads_generated_files(tmp_path):
    pytest.importorskip("torchvision", reason="the vision extra (torchvision) is not installed here")
    from trainkit.data.datasets import DATASETS

    rng = np.random.default_rng(0)
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    batches = ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]
    for name in batches:
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        with open(base / name, "wb") as f:
            pickle.dump({"data": data, "labels": [0, 1, 2, 3]}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    try:
        data = DATASETS.get("cifar10")(root=str(tmp_path))
    except ConfigError as e:  # torchvision checks md5 sums of the real files
        pytest.skip(f"torchvision refuses generated CIFAR files: {e}")
    assert data.x.shape == (20, 3, 32, 32) and data.test is not None and len(data.test.y) == 4


@pytest.mark.slow  # a fit of one epoch, 2 workers
def test_a_lazy_folder_run_reads_each_image_in_a_worker_never_up_front(tmp_path, monkeypatch):
    import os

    from trainkit.data.files import ImageFiles
    from trainkit.runner import TrainkitCLI

    root = make_folder(tmp_path / "imgs", per_class=24)
    log = tmp_path / "reads.txt"
    real = ImageFiles.read

    def counted(self, i):  # inherited by the forked workers: each read leaves its pid
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return real(self, i)

    monkeypatch.setattr(ImageFiles, "read", counted)
    cli = TrainkitCLI(["fit", "--config", str(DEFAULT_RECIPE), "--data.dataset=image_folder", f"--data.root={root}",
                       "--data.batch_size=8", "--data.augment={train: cifar}", "--trainer.max_epochs=1",
                       "--data.stats_sample=8", "--trainer.logger=false", *QUIET])  # the recipe's 2 workers
    pids = [int(p) for p in log.read_text().split()]
    assert os.getpid() not in pids, "the main process decodes no image (statistics too are summed in workers)"
    dm = cli.datamodule
    n_train, n_val = len(dm.splits["train"]), len(dm.splits["val"])
    assert len(pids) >= 8 + n_train + n_val and len(set(pids)) >= 2, "stats sample, the epoch and validation, in workers"


def test_peak_memory_of_a_lazy_folder_does_not_grow_with_the_number_of_images(tmp_path):
    import tracemalloc

    def peak(n: int) -> int:
        root = make_folder(tmp_path / f"f{n}", per_class=n, size=32)
        tracemalloc.start()
        dm = DataModule(dataset="image_folder", root=str(root), num_workers=0, batch_size=8, augment={"train": "cifar"})
        dm.setup()
        loader = dm.train_dataloader()
        for _, _ in zip(range(2), loader):  # two training steps' batches
            pass
        got = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return got

    small, large = peak(20), peak(200)  # 40 vs 400 images of 32x32x3
    per_image = 32 * 32 * 3  # bytes of one decoded uint8 image; the old loader held 4x that per image, float32
    assert large - small < 0.1 * 360 * per_image, (small, large)
