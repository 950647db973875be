"""image_folder on PNG/JPEG files the tests write with OpenCV; torchvision sets on generated files."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import DEFAULT_RECIPE, QUIET

from trainkit.cli import main
from trainkit.data.files import image_folder
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


def test_image_folder_reads_png_and_jpeg_as_rgb_with_folder_labels(tmp_path):
    data = image_folder(str(make_folder(tmp_path / "imgs")))
    assert data.classes == ("blue", "red") and data.x.shape == (12, 3, 10, 10) and data.max_value == 255
    assert data.y.tolist() == [0] * 6 + [1] * 6
    centre = data.x[:, :, 5, 5]
    assert np.all(np.abs(centre[:6] - [0, 0, 255]) <= 12), "blue is RGB (0, 0, 255); JPEG is lossy"
    assert np.all(np.abs(centre[6:] - [255, 0, 0]) <= 12)
    np.testing.assert_array_equal(data.x[1, :, 0, 0], [1, 1, 1])  # 1.png: lossless
    grey = image_folder(str(tmp_path / "imgs"), channels=1, size=[4, 6])
    assert grey.x.shape == (12, 1, 4, 6)


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
        image_folder(str(root))
    assert image_folder(str(root), size=[10, 10]).x.shape == (13, 3, 10, 10)


def test_train_test_layout_gives_the_own_test_split(tmp_path):
    make_folder(tmp_path / "d" / "train")
    make_folder(tmp_path / "d" / "test", per_class=2)
    data = image_folder(str(tmp_path / "d"))
    assert len(data.y) == 12 and data.test is not None and data.test.y.tolist() == [0, 0, 1, 1]


def test_image_folder_trains_from_the_recipe_and_bad_files_exit_2(tmp_path, capsys):
    root = make_folder(tmp_path / "imgs", per_class=20)
    args = ["fit", "--config", str(DEFAULT_RECIPE), "--data.dataset=image_folder", f"--data.root={root}",
            "--data.batch_size=8", "--data.num_workers=0", "--data.augment={train: cifar}", *QUIET]
    assert main([*args, "--trainer.fast_dev_run=true"]) == 0
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
