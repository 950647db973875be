"""The in-memory fast path (``data.loader: memory``) and the throughput record (issue 9)."""

from __future__ import annotations

import json

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from conftest import DEFAULT_RECIPE, QUIET

from trainkit.callbacks.throughput import KEY
from trainkit.data.datamodule import DataModule
from trainkit.data.loader import EpochSampler, ResumableLoader
from trainkit.data.memory import BatchAugment, MemoryLoader, batch_augment
from trainkit.errors import ConfigError
from trainkit.runner import TrainkitCLI


def loaders(dm: DataModule, rank: int, world: int = 2, batch: int = 64) -> tuple[ResumableLoader, MemoryLoader]:
    """The DataLoader path and the fast path of one simulated rank."""
    ds = dm.splits["train"]
    slow = ResumableLoader(ds, sampler=EpochSampler(ds, world, rank, seed=7), batch_size=batch)
    x, y = ds.tensors
    return slow, MemoryLoader(x, y, batch, EpochSampler(ds, world, rank, seed=7))


def epoch(loader, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader.sampler.set_epoch(n)
    return list(loader)


def test_fast_path_yields_the_dataloader_paths_batches_disjoint_per_rank():
    dm = DataModule(num_workers=0, loader="memory")
    dm.setup()
    n = len(dm.splits["train"])
    orders = []
    for e in (0, 1):
        seen = []
        for rank in (0, 1):
            slow, fast = loaders(dm, rank)
            a, b = epoch(slow, e), epoch(fast, e)
            assert len(a) == len(b) == len(fast)
            for (xa, ya), (xb, yb) in zip(a, b):
                assert torch.equal(xa, xb) and torch.equal(ya, yb)
            seen.append(list(fast.sampler))  # this epoch's indices of the rank
        r0, r1 = set(seen[0]), set(seen[1])
        assert r0 | r1 == set(range(n)), "the ranks together cover the split"
        assert len(r0 & r1) == len(seen[0]) + len(seen[1]) - n, "disjoint but for the sampler's padding"
        orders.append(seen[0])
    assert orders[0] != orders[1], "a fresh permutation each epoch"


def test_fast_path_resumes_mid_epoch_with_the_batches_not_yet_seen():
    dm = DataModule(dataset="synthetic", dataset_args={"size": 256}, num_workers=0, loader="memory",
                    augment={"train": "cifar"})
    dm.setup()
    x, y = dm.splits["train"].tensors
    make = lambda: MemoryLoader(x, y, 16, EpochSampler(dm.splits["train"], 1, 0, seed=3), augment=dm.memory_augment, seed=5)
    full = epoch(make(), 2)
    resumed = make()
    resumed.load_state_dict({"epoch": 2, "served": 4})
    tail = list(resumed)  # the trainer does not call set_epoch again before the first resumed pass
    assert len(tail) == len(full) - 4
    for (xa, ya), (xb, yb) in zip(full[4:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb), "augmentation draws are replayed exactly too"


def fit(tmp_path, loader: str, *extra: str) -> TrainkitCLI:
    return TrainkitCLI([
        "fit", "--config", str(DEFAULT_RECIPE), *QUIET, "--trainer.max_epochs=2", "--data.num_workers=0",
        "--trainer.logger=false", f"--data.loader={loader}", f"--run.name={loader}", *extra,
    ])


def test_fast_path_trains_the_same_weights_and_records_throughput(tmp_path):
    slow = fit(tmp_path, "dataloader")
    fast = fit(tmp_path, "memory", "--trainer.max_time={minutes: 10}")
    a = torch.load(slow.run_dir.checkpoints / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(fast.run_dir.checkpoints / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k

    value = json.loads((fast.run_dir.path / "metrics.json").read_text())[KEY]
    timer = fast.trainer.callbacks[[type(c).__name__ for c in fast.trainer.callbacks].index("Timer")]
    rough = 2 * len(fast.datamodule.splits["train"]) / timer.time_elapsed("train")  # incl. validation
    assert 0.5 * rough <= value <= 5 * rough, (value, rough)


def offsets_and_flips(out: np.ndarray, w: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Crop offsets (dy, dx) in [0, 2 pad] and flips of images made from ``1 + r * w + c``."""
    c = w // 2
    v0, v1 = out[:, c, c].astype(int) - 1, out[:, c, c + 1].astype(int) - 1
    flipped = (v1 % w) < (v0 % w)
    dy = v0 // w - c + pad
    dx = np.where(flipped, v0 % w - (w - 1 - c) + pad, v0 % w - c + pad)
    return np.stack([dy, dx], 1), flipped


@pytest.mark.parametrize("transforms", [
    [A.HorizontalFlip(p=0.5)],
    [A.PadIfNeeded(min_height=24, min_width=24, border_mode=cv2.BORDER_CONSTANT, fill=0), A.RandomCrop(16, 16)],
])
def test_batched_augmentations_match_albumentations_in_distribution(transforms):
    n, h = 3000, 16
    img = (1 + np.arange(h * h, dtype=np.float32)).reshape(h, h)
    pipe = A.Compose(transforms, seed=0)
    ref = np.stack([pipe(image=img[..., None])["image"][..., 0] for _ in range(n)])
    aug = batch_augment(pipe, h, h, fill=torch.zeros(1))
    assert aug is not None
    out = aug(torch.from_numpy(img).expand(n, 1, h, h), torch.Generator().manual_seed(0))[:, 0].numpy()
    pad = aug.pad
    (off_a, flip_a), (off_b, flip_b) = offsets_and_flips(ref, h, pad), offsets_and_flips(out, h, pad)
    if pad == 0:
        assert (off_b == pad).all() and 0.46 < flip_b.mean() < 0.54 and abs(flip_a.mean() - flip_b.mean()) < 0.05
        return
    assert not flip_b.any()
    assert off_b.min() == 0 and off_b.max() == 2 * pad, "crop offsets within bounds"
    reach = lambda off: {tuple(o) for o in off}
    assert reach(off_b) == reach(off_a) == {(i, j) for i in range(2 * pad + 1) for j in range(2 * pad + 1)}
    for axis in (0, 1):  # per-axis offset frequencies agree with albumentations'
        fa = np.bincount(off_a[:, axis], minlength=2 * pad + 1) / n
        fb = np.bincount(off_b[:, axis], minlength=2 * pad + 1) / n
        assert np.abs(fa - fb).max() < 0.04
    # the padded border is the fill value, exactly where the offset puts it
    i = int(np.flatnonzero((off_b[:, 0] == 0) & (off_b[:, 1] == pad))[0])  # shifted down only
    assert (out[i, :pad] == 0).all() and (out[i, pad:] > 0).all()


def test_memory_refuses_augmentations_it_cannot_batch():
    with pytest.raises(ConfigError, match="data.augment.*Affine.*supports"):
        DataModule(num_workers=0, loader="memory", augment={"train": "affine"}).setup()
    with pytest.raises(ConfigError, match="data.loader"):
        DataModule(loader="gpu")
    dm = DataModule(num_workers=0, loader="memory", augment={"train": "cifar"})
    dm.setup()
    assert dm.memory_augment == BatchAugment(hflip=0.5, pad=4, fill=dm.memory_augment.fill)


def test_cli_refuses_an_unbatchable_augment_with_exit_2_naming_the_key(capsys):
    from trainkit.cli import main

    assert main(["fit", "--config", str(DEFAULT_RECIPE), "--data.loader=memory", "--data.augment={train: affine}"]) == 2
    err = capsys.readouterr().err
    assert "data.augment" in err and "HorizontalFlip" in err
    assert main(["fit", "--config", str(DEFAULT_RECIPE), "--data.loader=fast"]) == 2
    assert "dataloader, memory" in capsys.readouterr().err


def test_memory_path_with_augmentation_and_mixing_reads_no_tensor_value_on_the_host(monkeypatch):
    # issue 17: the draws used to come from a CPU generator copied to the device every step
    dm = DataModule(num_workers=0, loader="memory", augment={"train": "cifar"}, mix={"mixup_alpha": 0.2, "cutmix_alpha": 1.0})
    dm.setup()
    loader = dm._memory_loader("train", True, 64)
    loader.sampler.set_epoch(0)
    it = iter(loader)
    first = next(it)  # the epoch's order is sent to the device once, on its first batch
    reads: list[str] = []
    for name in ("item", "__bool__", "__float__", "__int__", "tolist", "cpu", "numpy"):
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _n=name, _r=real, **k: reads.append(_n) or _r(self, *a, **k))
    steps = 0
    for k, (x, y) in enumerate(it, 1):
        mixed, soft = dm.mixer(x, y, dm.num_classes, (0, 0, k))
        steps += 1
    monkeypatch.undo()
    assert steps == len(loader) - 1 and reads == [], reads
    assert mixed.shape[1:] == first[0].shape[1:] and soft.shape == (len(y), 10)
