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
    assert meta["classes"] == ["c0", "c1", "c2"] and meta["input_shape"] == [3, 12, 12] and meta["encoding"] == "png"
    np.testing.assert_allclose(meta["mean"], dm.mean.ravel(), rtol=1e-6)  # the training split's, nothing else
    np.testing.assert_allclose(meta["std"], dm.std.ravel(), rtol=1e-6)
    assert "image_folder" in meta["recipe"] and str(images) in meta["recipe"]
    source = StreamingSource(str(packed))
    for split in ("train", "val", "test"):
        x_src, y_src = dm.arrays[split]
        loader = source.loader(split, batch_size=5, shuffle=False, seed=0, rank=0, world_size=1, num_workers=0,
                               pin_memory=False)
        xs, ys = map(torch.cat, zip(*loader))
        assert xs.dtype == torch.uint8 and ys.dtype == torch.int64
        # the same samples as the recipe's own split (its seeded stratified indices), pixel for pixel
        order = np.argsort(fingerprints(xs))
        expected = np.argsort(fingerprints(torch.from_numpy(x_src).to(torch.uint8)))
        assert torch.equal(xs[order].float(), torch.from_numpy(x_src[expected])), split
        assert ys[order].tolist() == y_src[expected].tolist()


def _fit(loader_factory, stop_at=None, resume=None, ckpt=None, identify=None, epochs=3) -> list:
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
    assert resumed[1] != full[1] and resumed[2] != full[2], "LitData got the epochs after a resume right: drop the wrapper"


def _progress_loader(source, num_workers, pipeline=None):
    def make(trainer):
        loop = trainer.fit_loop.epoch_loop
        return source.loader("train", batch_size=8, shuffle=True, seed=5, rank=0, world_size=1,
                             num_workers=num_workers, pin_memory=False, pipeline=pipeline,
                             progress=lambda: (trainer.current_epoch, loop.batch_progress.current.processed))
    return make


@pytest.mark.parametrize("num_workers", [0, 2])
def test_streaming_loader_resumes_exactly_under_lightning_fit(packed, tmp_path, num_workers):
    source = StreamingSource(str(packed))
    make = _progress_loader(source, num_workers)
    full = epochs_seen(_fit(make))
    assert all(sorted(full[e]) == sorted(full[0]) and len(set(full[e])) == N_TRAIN for e in full), "each sample once"
    assert full[0] != full[1] != full[2], "reshuffled every epoch"
    batches = N_TRAIN // 8
    for stop in (3, batches - 1, batches + 5):  # mid-epoch, the last batch of an epoch, mid-epoch later
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
