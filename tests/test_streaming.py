"""Streaming shards (issue 16 item 5): ``trainkit pack`` writes the recipe's splits with LitData,
``data.dataset: streaming`` trains from a folder or a real S3-compatible server on 127.0.0.1;
exact resume under Lightning's fit loop, disjoint ranks, per-sample augmentation draws."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml
from conftest import DEFAULT_RECIPE, QUIET, tree_digest
from s3_server import S3Server
from streaming_helpers import Recorder, Stop, ddp_worker, epochs_seen, fingerprints, flipped, make_images
from test_metrics import free_port

from trainkit.cli import main
from trainkit.data.datamodule import DataModule
from trainkit.data.shards import META_FILE
from trainkit.data.streaming import StreamingSource
from trainkit.errors import ConfigError

# 3 x 40 images; val and test 12 each, so the training split (96) is 6 batches of 16: two
# ranks x batch 8 see every sample once per epoch (LitData drops a remainder on many ranks)
FOLDER_ARGS = ["--data.dataset=image_folder", "--data.val_fraction=0.1", "--data.test_fraction=0.1"]
N_TRAIN = 96


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("images") / "imgs")


@pytest.fixture(scope="module")
def packed(images, tmp_path_factory) -> Path:
    """The image folder's splits packed by `trainkit pack` (in this process), small chunks."""
    out = tmp_path_factory.mktemp("packed") / "shards"
    args = ["--config", str(DEFAULT_RECIPE), *FOLDER_ARGS, f"--data.root={images}", f"--out={out}",
            "--workers=2", "--chunk-bytes=4KB"]
    assert main(["pack", *args]) == 0
    return out


def folder_module(images: Path) -> DataModule:
    dm = DataModule(dataset="image_folder", root=str(images), val_fraction=0.1, test_fraction=0.1)
    dm.setup("fit")
    return dm


def stream(loader, epochs=(0,)) -> dict[int, list[int]]:
    out = {}
    for epoch in epochs:
        loader.set_epoch(epoch)
        out[epoch] = [k for x, _ in loader for k in fingerprints(x)]
    return out


def test_pack_writes_the_recipes_splits_pixels_and_training_statistics(images, packed):
    dm = folder_module(images)
    meta = json.loads((packed / META_FILE).read_text())
    assert meta["splits"] == {"train": N_TRAIN, "val": 12, "test": 12}
    assert meta["classes"] == ["c0", "c1", "c2"] and meta["input_shape"] == [3, 12, 12]
    assert meta["encoding"] == "file", "an image folder's files are stored as they are"
    np.testing.assert_allclose(meta["mean"], dm.mean.ravel(), rtol=1e-6)  # the training split's, nothing else
    np.testing.assert_allclose(meta["std"], dm.std.ravel(), rtol=1e-6)
    assert "image_folder" in meta["recipe"] and str(images) in meta["recipe"]
    source = StreamingSource(str(packed))
    for split in ("train", "val", "test"):
        own = dm.splits[split]  # the recipe's own split: its seeded stratified indices into the folder
        expected = torch.from_numpy(np.stack([own.source.read(int(i)) for i in own.indices]).transpose(0, 3, 1, 2))
        loader = source.loader(split, batch_size=5, shuffle=False, seed=0, rank=0, world_size=1, num_workers=0,
                               pin_memory=False)
        xs, ys = map(torch.cat, zip(*loader))
        assert xs.dtype == torch.uint8 and ys.dtype == torch.int64
        order, want = np.argsort(fingerprints(xs)), np.argsort(fingerprints(expected))
        assert fingerprints(xs) != sorted(fingerprints(xs)), "stored in a shuffled order"
        assert torch.equal(xs[order], expected[want]), f"{split}: the same samples, pixel for pixel"
        assert ys[order].tolist() == own.labels[want].tolist()


def test_keys_that_differ_from_the_packs_warn_and_the_pack_applies(packed, recwarn):
    dm = DataModule(dataset="streaming", root=str(packed), val_fraction=0.1, test_fraction=0.1)
    dm.setup("fit")
    assert dm.input_shape == (3, 12, 12) and dm.num_classes == 3 and len(dm.splits["train"]) == N_TRAIN
    assert not [w for w in recwarn if "packed with" in str(w.message)], "the packing recipe's own values"
    # a recipe overridden to streaming keeps its source's dataset_args: accepted, compared, warned
    with pytest.warns(UserWarning, match=r"data.val_fraction is 0.2, but the shards .* were packed with 0.1"):
        DataModule(dataset="streaming", root=str(packed), val_fraction=0.2, test_fraction=0.1).setup("fit")
    with pytest.warns(UserWarning, match=r"data.dataset_args is \{'channels': 1\}.* packed with None"):
        other = DataModule(dataset="streaming", root=str(packed), dataset_args={"channels": 1}, val_fraction=0.1,
                           test_fraction=0.1)
        other.setup("fit")
    assert other.input_shape == (3, 12, 12), "the pack's"


def _fit(loader_factory, stop_at=None, resume=None, ckpt=None, identify=None, epochs=2) -> list:
    seen: list = []
    kwargs = {"identify": identify} if identify else {}
    module = Recorder(seen, stop_at, ckpt, **kwargs)

    class Data(pl.LightningDataModule):
        def train_dataloader(self):
            return loader_factory(self.trainer)

    trainer = pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    try:
        trainer.fit(module, Data(), ckpt_path=resume, weights_only=True)
    except Stop:
        pass
    return seen


def test_litdata_alone_loses_the_order_after_a_resume(packed, tmp_path):
    """Why StreamingLoader exists: LitData 0.2.76's own loader, checkpointed by Lightning mid-epoch
    and resumed, serves the resumed epoch right and every later one wrong (its restore flag is
    cleared only by an exhausted iterator; Lightning stops an epoch by count)."""
    from litdata import StreamingDataLoader, StreamingDataset

    def plain(trainer):
        return StreamingDataLoader(StreamingDataset(str(packed / "train"), shuffle=True, seed=5), batch_size=8)

    identify = lambda b: b["index"].tolist()  # noqa: E731
    full = epochs_seen(_fit(plain, identify=identify))
    ckpt = str(tmp_path / "cut.ckpt")
    first = _fit(plain, stop_at=4, ckpt=ckpt, identify=identify)
    resumed = epochs_seen(first + _fit(plain, resume=ckpt, identify=identify))
    assert resumed[0] == full[0], "the resumed epoch itself is right"
    assert resumed[1] != full[1], "LitData got the epoch after a resume right: the wrapper may go"


def _progress_loader(source, num_workers, pipeline=None):
    def make(trainer):
        loop = trainer.fit_loop.epoch_loop
        return source.loader("train", batch_size=8, shuffle=True, seed=5, rank=0, world_size=1,
                             num_workers=num_workers, pin_memory=False, pipeline=pipeline,
                             progress=lambda: (trainer.current_epoch, loop.batch_progress.current.processed))
    return make


@pytest.mark.parametrize("num_workers, stops", [(0, ["mid"]), (2, ["mid", "last", "later"])])
def test_streaming_loader_resumes_exactly_under_lightning_fit(packed, tmp_path, num_workers, stops):
    source = StreamingSource(str(packed))
    make = _progress_loader(source, num_workers)
    full = epochs_seen(_fit(make))
    assert all(sorted(full[e]) == sorted(full[0]) and len(set(full[e])) == N_TRAIN for e in full), "each sample once"
    assert full[0] != full[1], "reshuffled every epoch"
    batches = N_TRAIN // 8
    # mid-epoch, at the last batch of the first epoch (before its end), mid-epoch in the second
    for stop in ({"mid": 3, "last": batches, "later": batches + 3}[s] for s in stops):
        ckpt = str(tmp_path / f"cut{stop}.ckpt")
        first = _fit(make, stop_at=stop, ckpt=ckpt)
        assert epochs_seen(first + _fit(make, resume=ckpt)) == full, f"resumed after step {stop}"


def test_augmentation_draws_are_a_function_of_seed_epoch_and_index(packed):
    import albumentations as A

    source = StreamingSource(str(packed))

    def draws(num_workers):
        pipe = A.Compose([A.HorizontalFlip(p=0.5)], seed=0)
        loader = source.loader("train", batch_size=8, shuffle=True, seed=5, rank=0, world_size=1,
                               num_workers=num_workers, pin_memory=False, pipeline=pipe, augment_seed=11)
        out = {}
        for epoch in (0, 1):
            loader.set_epoch(epoch)
            out[epoch] = {k: f for x, _ in loader for k, f in zip(fingerprints(x), flipped(x))}
        return out

    zero, two = draws(0), draws(2)
    assert zero == two, "the same draw per sample whatever the number of workers (and whichever worker reads it)"
    for epoch in (0, 1):
        assert len(zero[epoch]) == N_TRAIN and 0.3 < np.mean(list(zero[epoch].values())) < 0.7
    changed = np.mean([zero[0][k] != zero[1][k] for k in zero[0]])
    assert 0.3 < changed < 0.7, "an epoch draws anew"


def test_two_gloo_ranks_stream_disjoint_samples_every_sample_once(packed, tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "seen.json"
    mp.spawn(ddp_worker, args=(2, free_port(), str(packed), str(out)), nprocs=2, join=True)
    ranks = json.loads(out.read_text())
    assert ranks[0]["batches"] == ranks[1]["batches"] == N_TRAIN // 16, "both ranks step together"
    for epoch in (0, 1):
        a, b = (set(r["seen"][epoch]) for r in ranks)
        assert len(ranks[0]["seen"][epoch]) == len(a) == N_TRAIN // 2 == len(b), "no sample twice on a rank"
        assert not a & b, "disjoint ranks"
        assert len(a | b) == N_TRAIN, "every training sample once per epoch"
    assert ranks[0]["seen"][0] != ranks[0]["seen"][1], "reshuffled per epoch"


def test_pack_refuses_an_existing_out_and_leaves_it_untouched(packed, capsys):
    before = tree_digest(packed)
    assert main(["pack", "--config", str(DEFAULT_RECIPE), f"--out={packed}"]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and str(packed) in err and "never overwrites" in err and "Traceback" not in err
    assert tree_digest(packed) == before


@pytest.mark.slow  # over 10 s: CI's slow pass (the default suite's budget)
def test_missing_litdata_exits_2_naming_the_install_command(tmp_path):
    # `import litdata` fails as on an install without it: None in sys.modules makes the import raise
    code = ("import sys; sys.modules['litdata'] = None; from trainkit.cli import main; "
            f"sys.exit(main(['pack', '--config', {str(DEFAULT_RECIPE)!r}, '--out', 'x']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "pip install --no-deps 'litdata==0.2.76'" in done.stderr and "trainkit[streaming]" in done.stderr
    assert "Traceback" not in done.stderr and not Path("x").exists()


def test_bad_shard_roots_are_errors_naming_the_file(packed, tmp_path):
    import shutil

    with pytest.raises(ConfigError, match="is not a folder"):
        StreamingSource(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=f"{META_FILE}.* is missing"):
        StreamingSource(str(tmp_path / "empty"))
    broken = tmp_path / "broken"
    shutil.copytree(packed, broken)
    (broken / "val" / "index.json").write_text('{"chunks": [')  # truncated
    with pytest.raises(ConfigError, match=r"val/index.json.* not a LitData index"):
        StreamingSource(str(broken))
    (broken / "val" / "index.json").write_text((packed / "val" / "index.json").read_text())
    chunk = sorted((broken / "train").glob("chunk-*.bin"))[0]
    chunk.unlink()
    with pytest.raises(ConfigError, match=f"shard .*{chunk.name}.* is missing"):
        StreamingSource(str(broken))


# -- through the CLI: fit from a folder and from s3://, resume, bad input -----------------------
@pytest.fixture(scope="module")
def digits_packed(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits") / "shards"
    assert main(["pack", "--config", str(DEFAULT_RECIPE), f"--out={out}", "--workers=2"]) == 0
    return out


def test_fit_from_local_shards_with_the_recipes_defaults(digits_packed, capsys):
    from wandb_records import read_run

    # the recipe as users run it: W&B offline, 2 workers, progress bar on
    args = ["fit", "--config", str(DEFAULT_RECIPE), "--data.dataset=streaming", f"--data.root={digits_packed}",
            "--trainer.max_epochs=3", "--run.name=streamed"]
    assert main(args) == 0, capsys.readouterr().err[-3000:]
    run = Path("runs/digits_mlp/streamed")
    metrics = json.loads((run / "metrics.json").read_text())
    # chance is 0.1; three epochs reach 0.96 (one epoch, mostly warmup, ranged 0.23-0.74 by pack)
    assert metrics["val/acc"] >= 0.85, metrics
    assert metrics["fit/epochs"] == 3
    last = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    state = last["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert (state["epoch"], state["batches"]) == (2, 20), "the loader's position is in the checkpoint"  # 1259 / 64
    assert read_run(run)["files"], "an offline W&B run in the run dir"
    recipe = yaml.safe_load((run / "config.yaml").read_text())
    assert recipe["data"]["dataset"] == "streaming" and recipe["data"]["root"] == str(digits_packed)


@pytest.mark.slow
@pytest.mark.timeout(900)  # three runs of the console script
def test_kill_minus_9_mid_epoch_and_relaunch_from_local_shards_ends_bitwise_equal(digits_packed):
    from test_resume import assert_same_weights, kill_when

    exe = str(Path(sys.executable).with_name("trainkit"))
    exact = ["--config", str(DEFAULT_RECIPE), "--data.dataset=streaming", f"--data.root={digits_packed}",
             "--data.augment={train: affine}", "--model.dropout=0.2", "--trainer.deterministic=true",
             "--trainer.logger=false", "--trainer.max_epochs=2", "--checkpoint.every_n_steps=7", *QUIET]
    full = subprocess.run([exe, "fit", *exact, "--run.name=full"], capture_output=True, text=True)
    assert full.returncode == 0, full.stderr[-3000:]
    cut = Path("runs/digits_mlp/cut/checkpoints/last.ckpt")
    # killed once a step checkpoint inside the second epoch exists (20 steps per epoch, 2 workers)
    kill_when([exe, "fit", *exact, "--run.name=cut"], cut, lambda c: 20 < c["global_step"] < 40 and c["global_step"] % 20)
    resumed = subprocess.run([exe, "fit", *exact, "--run.name=cut"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr + resumed.stdout
    assert torch.load(cut, weights_only=True)["global_step"] == 40
    assert_same_weights(Path("runs/digits_mlp/full/checkpoints/last.ckpt"), cut)


@pytest.fixture(scope="module")
def s3_server():
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The server's AWS environment for this test, and a fresh bucket."""
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    for var, value in s3_server.env().items():
        monkeypatch.setenv(var, value)
    return s3_server, s3_server.new_bucket()


@pytest.mark.slow  # a pack and three fits through the object store
def test_pack_then_fit_from_s3_trains_and_resumes_mid_epoch_exactly(images, s3, tmp_path, capsys, caplog):
    import logging

    from test_resume import assert_same_weights

    server, bucket = s3
    url = f"s3://{bucket}/folder/v1"
    assert main(["pack", "--config", str(DEFAULT_RECIPE), *FOLDER_ARGS, f"--data.root={images}", f"--out={url}",
                 "--workers=2", "--chunk-bytes=4KB"]) == 0
    keys = server.keys(bucket, "folder/v1/")
    assert "folder/v1/trainkit.json" in keys and "folder/v1/train/index.json" in keys
    assert sum(k.startswith("folder/v1/train/chunk-") for k in keys) > 1, "chunks uploaded to the server"
    fit = ["fit", "--config", str(DEFAULT_RECIPE), "--data.dataset=streaming", f"--data.root={url}",
           "--data.batch_size=16", "--data.num_workers=0", "--model.dropout=0.2", "--trainer.deterministic=true", "--trainer.logger=false", *QUIET]
    assert main([*fit, "--trainer.max_epochs=1", "--run.name=whole"]) == 0, capsys.readouterr().err[-3000:]
    # a step checkpoint in the middle of the epoch (6 steps of 16), then a relaunch from it; these
    # two skip validation (it draws no random number, so the weights must match all the same)
    fit += ["--trainer.limit_val_batches=0"]
    assert main([*fit, "--trainer.max_steps=5", "--checkpoint.every_n_steps=3", "--run.name=cut"]) == 0
    mid = tmp_path / "mid.ckpt"
    mid.write_bytes(Path("runs/digits_mlp/cut/checkpoints/previous.ckpt").read_bytes())
    position = torch.load(mid, weights_only=True)["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert (position["epoch"], position["batches"]) == (0, 3)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
        assert main([*fit, "--trainer.max_epochs=1", f"--ckpt_path={mid}", "--run.name=resumed"]) == 0
    assert f"Restoring states from the checkpoint path at {mid}" in caplog.text, "it resumed at step 3"
    whole, resumed = (Path(f"runs/digits_mlp/{n}/checkpoints/last.ckpt") for n in ("whole", "resumed"))
    assert torch.load(resumed, weights_only=True)["global_step"] == 6
    assert_same_weights(whole, resumed)
    metrics = json.loads(Path("runs/digits_mlp/whole/metrics.json").read_text())
    assert metrics["fit/epochs"] == 1 and 0 <= metrics["val/acc"] <= 1, "validated from the bucket too"


def test_bad_streaming_input_exits_2_naming_it_and_writes_nothing(packed, s3, tmp_path, monkeypatch, capsys):
    server, bucket = s3
    fit = ["fit", "--config", str(DEFAULT_RECIPE), "--data.dataset=streaming", *QUIET]
    cases = [
        ([f"--data.root={tmp_path / 'missing'}"], ["data.root", "missing", "is not a folder"]),
        ([f"--data.root={tmp_path}"], ["data.root", "trainkit.json", "is missing"]),
        ([f"--data.root=s3://{bucket}/none"], ["data.root", f"s3://{bucket}/none/trainkit.json", "is missing"]),
        ([f"--data.root={packed}", "--data.folds=3"], ["data.folds", "pack"]),
    ]
    for extra, words in cases:
        assert main([*fit, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert all(w in err for w in words) and "Traceback" not in err, (extra, err)
    # object store problems: the variable to set, before anything is written
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    assert main([*fit, f"--data.root=s3://{bucket}/x"]) == 2
    assert "cannot reach the S3 endpoint" in (err := capsys.readouterr().err) and "AWS_ENDPOINT_URL" in err
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata probe for credentials
    assert main([*fit, f"--data.root=s3://{bucket}/x"]) == 2
    assert "no AWS credentials" in (err := capsys.readouterr().err) and "AWS_ACCESS_KEY_ID" in err
    assert main(["pack", "--config", str(DEFAULT_RECIPE), f"--out=s3://{bucket}/y"]) == 2
    assert "AWS_ACCESS_KEY_ID" in capsys.readouterr().err
    for command in ("doctor", "preview-data"):  # they read the source's own splits and labels
        assert main([command, "--config", str(DEFAULT_RECIPE), "--data.dataset=streaming", f"--data.root={packed}"]) == 2
        assert "data.dataset" in capsys.readouterr().err
    assert not Path("runs").exists(), "no run dir for refused input"


def test_pack_never_writes_into_an_s3_prefix_that_holds_objects(s3, capsys):
    server, bucket = s3
    server.client().put_object(Bucket=bucket, Key="taken/keep.txt", Body=b"earlier")
    assert main(["pack", "--config", str(DEFAULT_RECIPE), f"--out=s3://{bucket}/taken"]) == 2
    assert "never overwrites" in capsys.readouterr().err
    assert server.keys(bucket) == ["taken/keep.txt"]
    assert server.client().get_object(Bucket=bucket, Key="taken/keep.txt")["Body"].read() == b"earlier"
