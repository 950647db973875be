"""Albumentations pipelines from the recipe: presets, YAML round trip, train vs eval, run dir, W&B."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
import yaml
from conftest import DEFAULT_RECIPE, QUIET, trainkit

from trainkit.cli import main
from trainkit.data.augment import AUGMENTATIONS, AugmentedImages, KeyedRandom, build_pipeline, pipeline_dict, seed_pipeline
from trainkit.data.datamodule import DataModule, standardization_stats, stratified_split
from trainkit.data.datasets import ArrayData
from trainkit.runner import TrainkitCLI
from wandb_records import read_run

IMAGES = {"dataset": "synthetic", "dataset_args": {"shape": [3, 12, 12], "size": 96}, "num_workers": 0, "batch_size": 8}
USER_DICT = {  # a pipeline in albumentations' own format, as a user would paste it into a recipe
    "transform": {
        "__class_fullname__": "Compose",
        "transforms": [
            {"__class_fullname__": "HorizontalFlip", "p": 0.5},
            {"__class_fullname__": "Affine", "rotate": [-20, 20], "p": 1.0},
        ],
    }
}


def images(n: int = 6, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((12, 12, 3), dtype=np.float32) for _ in range(n)]


@pytest.mark.parametrize("spec", [*AUGMENTATIONS.names(), "user_dict"])
def test_pipeline_yaml_round_trip_gives_identical_outputs(spec):
    original = build_pipeline(USER_DICT if spec == "user_dict" else spec, 12, 12, seed=3)
    text = yaml.safe_dump(pipeline_dict(original))
    loaded = build_pipeline(yaml.safe_load(text), 12, 12, seed=3)
    assert pipeline_dict(loaded) == pipeline_dict(original)
    outs = [(original(image=img)["image"], loaded(image=img)["image"]) for img in images()]
    for a, b in outs:
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, img) for (a, _), img in zip(outs, images())), "the pipeline does something"


@pytest.mark.parametrize("preset", AUGMENTATIONS.names())
def test_train_transforms_change_images_and_keep_labels(preset):
    dm = DataModule(**IMAGES, augment={"train": preset})
    dm.setup()
    train = dm.splits["train"]
    assert isinstance(train, AugmentedImages)
    plain = torch.from_numpy(((train.x - dm.mean) / dm.std).astype(np.float32))
    changed = 0
    for i in range(16):
        x, y = train[i]
        assert x.shape == plain[i].shape and int(y) == int(train.y[i])
        changed += not torch.allclose(x, plain[i], atol=1e-5)
    assert changed >= 12, f"{preset} changed only {changed} of 16 images"
    # standardization statistics are those of the un-augmented training images
    idx = stratified_split(dm.data.y, 0.15, 0.15, 0)
    mean, std = standardization_stats(dm.data.x[idx["train"]])
    np.testing.assert_array_equal(dm.mean, mean)
    np.testing.assert_array_equal(dm.std, std)


def test_eval_transforms_are_deterministic_and_train_ones_vary_by_epoch():
    dm = DataModule(**IMAGES, augment={"train": "affine", "eval": "affine"})
    dm.setup()
    first = torch.cat([x for x, _ in dm.val_dataloader()])
    again = torch.cat([x for x, _ in dm.val_dataloader()])
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    train = dm.splits["train"]
    assert not torch.equal(train[0][0], train[0][0]), "a train sample is augmented afresh every time"
    # no eval pipeline: val is the standardized data itself
    plain = DataModule(**IMAGES, augment={"train": "affine"})
    plain.setup()
    assert not isinstance(plain.splits["val"], AugmentedImages)


def test_same_seed_repeats_augmentation_and_another_seed_does_not():
    def first_batch(seed: int) -> torch.Tensor:
        dm = DataModule(**IMAGES, augment={"train": "imagenet"}, seed=seed)
        dm.setup()
        return torch.stack([dm.splits["train"][i][0] for i in range(8)])

    assert torch.equal(first_batch(1), first_batch(1))
    assert not torch.equal(first_batch(1), first_batch(2))


def fit(*overrides: str) -> TrainkitCLI:
    args = ["fit", "--config", str(DEFAULT_RECIPE), "--trainer.fast_dev_run=true", "--data.num_workers=0"]
    return TrainkitCLI([*args, *QUIET, *overrides])


def test_augment_key_reaches_run_dir_and_survives_config_yaml(capsys):
    cli = fit("--data.augment={train: cifar, eval: null}", "--run.name=aug", "--seed_everything=5")
    run = Path("runs/digits_mlp/aug")
    saved = yaml.safe_load((run / "augment.yaml").read_text())
    assert saved["eval"] is None
    loaded = A.from_dict(saved["train"])
    assert [t.__class__.__name__ for t in loaded.transforms] == ["PadIfNeeded", "RandomCrop", "HorizontalFlip"]
    assert loaded.transforms[1].height == 8, "the crop goes back to the 8x8 input size"
    assert cli.datamodule.seed == 5, "seeded from seed_everything"
    # the written recipe loads again and means the same
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["augment"] == {"train": "cifar", "eval": None}
    capsys.readouterr()
    assert main(["fit", "--config", str(run / "config.yaml"), "--run.name=again", "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["augment"] == {"train": "cifar", "eval": None}


def test_augment_dict_in_a_recipe_file_round_trips(tmp_path):
    recipe = yaml.safe_load(DEFAULT_RECIPE.read_text())
    recipe["data"]["augment"] = {"train": USER_DICT, "eval": None}
    Path("r.yaml").write_text(yaml.safe_dump(recipe))
    cli = TrainkitCLI(["fit", "--config", "r.yaml", "--trainer.fast_dev_run=true", "--data.num_workers=0", "--run.name=d", *QUIET])
    assert [t.__class__.__name__ for t in cli.datamodule.pipelines["train"].transforms] == ["HorizontalFlip", "Affine"]
    saved = yaml.safe_load(Path("runs/r/d/config.yaml").read_text())
    assert saved["data"]["augment"]["train"] == USER_DICT
    Path("r2.yaml").write_text(Path("runs/r/d/config.yaml").read_text())
    again = TrainkitCLI(["fit", "--config", "r2.yaml", "--trainer.fast_dev_run=true", "--run.name=d2", *QUIET])
    assert pipeline_dict(again.datamodule.pipelines["train"]) == pipeline_dict(cli.datamodule.pipelines["train"])


@pytest.mark.parametrize(
    "override, words",
    [
        (["--data.augment={train: cifarr}"], ["data.augment.train", "'cifar'"]),
        (["--data.augment={valid: cifar}"], ["data.augment", "train", "eval"]),
        (["--data.augment={train: {__class_fullname__: NoSuchTransform}}"], ["data.augment.train", "NoSuchTransform"]),
        (["--data.dataset=breast_cancer", "--data.augment={train: cifar}"], ["data.augment", "table"]),
    ],
)
def test_bad_augment_exits_2_naming_the_key(override, words, capsys):
    assert main(["fit", "--config", str(DEFAULT_RECIPE), *override, *QUIET]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for word in words:
        assert word in err, err
    assert not Path("runs").exists()


@pytest.mark.slow  # over 10 s: CI's slow pass (the default suite's budget)
def test_preview_data_writes_a_png_grid_and_logs_it():
    import cv2

    # a real process: W&B runs opened one after another in one process share state
    done = trainkit("preview-data", "--config", str(DEFAULT_RECIPE), "--data.augment={train: affine}", "--run.name=p")
    assert done.returncode == 0, done.stderr[-3000:]
    png = Path("runs/digits_mlp/p/preview.png")
    assert done.stdout.strip().splitlines()[-2:] == [f"preview: {png}", f"run dir: {png.parent}"]
    img = cv2.imread(str(png))
    assert img is not None and img.shape[0] > 400 and img.shape[1] > 400
    assert img.std() > 10, "the grid shows images, not a blank canvas"
    records = read_run(png.parent)  # read after the process ended: the W&B file is complete
    history = records["history"]
    logged = [row for row in history if row.get("data/preview/_type") == "images/separated"]
    assert len(logged) == 1 and logged[0]["data/preview/count"] == 1, history
    assert not (png.parent / "checkpoints" / "last.ckpt").exists(), "preview does not train"
    # the W&B config holds the recipe and the resolved pipelines, as augment.yaml does
    saved = yaml.safe_load((png.parent / "augment.yaml").read_text())
    assert records["config"]["data"]["augment"] == {"train": "affine"}
    assert records["config"]["augment_pipelines"] == saved and saved["train"]["transform"]["transforms"][0]["__class_fullname__"] == "Affine"


def constant_images(dm: DataModule, n: int = 48) -> DataModule:
    """The same image at every index: any difference between samples is the augmentation's."""
    img = np.random.default_rng(0).random((1, 3, 12, 12), dtype=np.float32)
    dm.__dict__["data"] = ArrayData(np.repeat(img, n, 0), np.arange(n) % 4, tuple("abcd"))
    return dm


def epochs_of(dm: DataModule, workers: int, persistent: bool, n_epochs: int = 2) -> list[torch.Tensor]:
    dm.num_workers, dm.persistent_workers = workers, persistent
    loader = dm.train_dataloader()
    out = []
    for e in range(n_epochs):
        loader.sampler.set_epoch(e)  # as Lightning does before every epoch
        out.append(torch.cat([x for x, _ in loader]))
    return out


def test_augmentation_is_a_function_of_seed_epoch_and_index_whatever_the_workers():
    dm = constant_images(DataModule(**{**IMAGES, "batch_size": 4}, augment={"train": "imagenet"}))
    dm.setup()
    ref = epochs_of(dm, 0, False)
    for workers, persistent in ((2, False), (2, True)):
        got = epochs_of(dm, workers, persistent)
        for a, b in zip(ref, got):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    first, second = ref
    flat = first.flatten(1)
    assert len(torch.unique(flat, dim=0)) == len(flat), "every sample of an epoch draws its own augmentation"
    # worker 0 and worker 1 take alternate batches: their samples differ too (the unique check)
    assert not torch.equal(first, second), "a new epoch draws anew"


def test_keyed_random_is_a_function_of_its_key_alone_and_uniform_across_keys():
    import pickle

    a, b = KeyedRandom(), KeyedRandom()
    a.reset(7, 1, 3)
    first = (a.numpy.random(4).tolist(), [a.python.random() for _ in range(4)], a.python.randint(0, 10**30),
             a.python.sample(range(1000), 5))
    b.reset(9, 9, 9)
    b.numpy.random(100)  # b's history must not matter
    b.reset(7, 1, 3)
    assert (b.numpy.random(4).tolist(), [b.python.random() for _ in range(4)], b.python.randint(0, 10**30),
            b.python.sample(range(1000), 5)) == first
    b.reset(7, 1, 4)
    assert b.numpy.random(4).tolist() != first[0]
    # the first draw of 4,000 neighbouring keys: uniform on [0, 1) (std of the mean 1/sqrt(12 n); 5 of them)
    # and no two keys alike (a hash collision of the state would repeat a draw exactly)
    draws = []
    for i in range(4000):
        a.reset(0, 1, i)
        draws.append(a.numpy.random())
    assert abs(np.mean(draws) - 0.5) < 5 / np.sqrt(12 * 4000)
    assert len(set(draws)) == 4000
    # a pipeline pickled into a DataLoader worker draws as the original does
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    pipe = A.Compose(AUGMENTATIONS.get("imagenet")(32, 32))
    seed_pipeline(pipe, 0, 2, 11)
    copy = pickle.loads(pickle.dumps(pipe))
    seed_pipeline(pipe, 0, 2, 11)
    seed_pipeline(copy, 0, 2, 11)
    assert np.array_equal(pipe(image=img)["image"], copy(image=img)["image"])


def test_a_pipeline_that_resizes_only_sometimes_is_refused_with_every_transform_on(capsys):
    # albumentations gives Resize p 0.5 when absent: one random draw of the check passed it
    spec = "--data.augment={train: {transform: {__class_fullname__: Resize, height: 16, width: 16}}}"
    assert main(["fit", "--config", str(DEFAULT_RECIPE), spec, *QUIET]) == 2
    err = capsys.readouterr().err
    assert "data.augment.train" in err and "16" in err and "every transform applied" in err and "Traceback" not in err
    assert not Path("runs").exists()


def test_preview_rows_show_every_class():
    from trainkit.data.preview import preview_picks

    dm = DataModule(num_workers=0, augment={"train": "affine"})
    dm.setup()
    labels = dm.splits["train"].y
    picks = preview_picks(labels, dm.num_classes, min(dm.num_classes, 32))
    assert sorted(int(labels[i]) for i in picks) == list(range(10)), "digits 8 and 9 appear too"


def test_lazy_folder_batches_are_the_same_for_0_and_2_workers_and_distinct_per_sample(tmp_path):
    import cv2

    img = np.random.default_rng(0).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    for c in ("a", "b"):
        (tmp_path / "f" / c).mkdir(parents=True)
        for i in range(16):
            cv2.imwrite(str(tmp_path / "f" / c / f"{i}.png"), img)  # one image everywhere
    dm = DataModule(dataset="image_folder", root=str(tmp_path / "f"), batch_size=4, num_workers=0,
                    augment={"train": "imagenet"}, mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2])
    dm.setup()
    ref = epochs_of(dm, 0, False)
    assert ref[0].dtype == torch.uint8
    for workers, persistent in ((2, False), (2, True)):
        for a, b in zip(ref, epochs_of(dm, workers, persistent)):
            assert torch.equal(a, b)
    flat = ref[0].flatten(1)
    assert len(torch.unique(flat, dim=0)) == len(flat) and not torch.equal(ref[0], ref[1])
