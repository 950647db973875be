"""Mixup/cutmix: soft targets are convex, sum to one and match the mixed pixels; loss on soft, metrics on hard."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import DEFAULT_RECIPE, QUIET

from trainkit.data.mixing import BatchMixer
from trainkit.errors import ConfigError
from trainkit.module import Classifier
from trainkit.runner import TrainkitCLI

N = 16


def distinct_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is filled with the value i and has label i: every pixel and target names its source."""
    x = torch.arange(N, dtype=torch.float32).view(N, 1, 1, 1).expand(N, 3, 8, 8).contiguous()
    return x, torch.arange(N)


def partners(soft: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's own weight and its partner's label (the other non-zero entry)."""
    lam = soft[torch.arange(N), y]
    other = soft.clone()
    other[torch.arange(N), y] = 0
    return lam, other.argmax(1)


def check_convex(soft: torch.Tensor) -> None:
    assert soft.shape == (N, N)
    assert torch.all(soft >= 0) and torch.all(soft <= 1)
    torch.testing.assert_close(soft.sum(1), torch.ones(N))
    assert torch.all((soft > 0).sum(1) <= 2), "a mix of at most two samples"


@pytest.mark.parametrize("seed", range(5))
def test_mixup_targets_are_the_blend_weights_of_the_inputs(seed):
    x, y = distinct_batch()
    mixed, soft = BatchMixer(mixup_alpha=0.4, seed=seed)(x, y, N)
    check_convex(soft)
    lam, partner = partners(soft, y)
    expected = lam.view(N, 1, 1, 1) * x + (1 - lam.view(N, 1, 1, 1)) * x[partner]
    torch.testing.assert_close(mixed, expected)
    assert not torch.equal(mixed, x)


@pytest.mark.parametrize("seed", range(5))
def test_cutmix_targets_match_the_pasted_pixel_area(seed):
    x, y = distinct_batch()
    mixed, soft = BatchMixer(cutmix_alpha=1.0, seed=seed)(x, y, N)
    check_convex(soft)
    for i in range(N):
        own = (mixed[i] == i).float().mean()
        torch.testing.assert_close(soft[i, i], own)  # the own label's weight is the kept area
        if own < 1:
            pasted = int(mixed[i][mixed[i] != i][0])
            torch.testing.assert_close(soft[i, pasted], 1 - own)
            box = (mixed[i, 0] != i).nonzero()
            area = (box[:, 0].max() - box[:, 0].min() + 1) * (box[:, 1].max() - box[:, 1].min() + 1)
            assert int(area) == int((mixed[i, 0] != i).sum()), "the pasted region is one rectangle"


def test_switch_prob_picks_cutmix_or_mixup_and_prob_zero_never_mixes():
    x, y = distinct_batch()
    kinds = set()
    mixer = BatchMixer(mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.5, seed=0)
    for k in range(20):
        mixed, _ = mixer(x, y, N, (0, 0, k))
        # cutmix keeps integer pixel values; mixup blends them
        kinds.add("cutmix" if torch.equal(mixed, mixed.round()) else "mixup")
    assert kinds == {"cutmix", "mixup"}
    same, soft = BatchMixer(mixup_alpha=1.0, prob=0.0)(x, y, N)
    assert torch.equal(same, x) and torch.equal(soft, F.one_hot(y, N).float())


def test_loss_uses_soft_targets_while_metrics_use_hard_labels():
    torch.manual_seed(0)
    model = Classifier(num_classes=4, input_shape=(6,), arch_args={"depth": 1, "width": 8})
    x, y = torch.randn(32, 6), torch.randint(0, 4, (32,))
    mixed, soft = BatchMixer(mixup_alpha=0.4, seed=1)(x, y, 4)
    loss = model.model_step((mixed, y, soft), "train")
    logits = model(mixed)
    torch.testing.assert_close(loss, F.cross_entropy(logits, soft))
    assert not torch.allclose(loss, F.cross_entropy(logits, y))
    acc = model.metrics["train_"].compute()["train/acc"]
    torch.testing.assert_close(acc, (logits.argmax(1) == y).float().mean())


def test_draws_are_a_function_of_seed_epoch_rank_and_batch(monkeypatch):
    x, y = distinct_batch()
    mixer = BatchMixer(mixup_alpha=1.0, cutmix_alpha=1.0, seed=3)
    a, b = mixer(x, y, N, (1, 0, 5)), BatchMixer(mixup_alpha=1.0, cutmix_alpha=1.0, seed=3)(x, y, N, (1, 0, 5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), "no generator state: a fresh mixer draws the same"
    others = [mixer(x, y, N, key)[1] for key in ((2, 0, 5), (1, 1, 5), (1, 0, 6))]
    assert all(not torch.equal(a[1], o) for o in others), "another epoch, rank or batch draws anew"

    keys = []
    real = BatchMixer.__call__
    monkeypatch.setattr(BatchMixer, "__call__", lambda self, *a: keys.append(a[3]) or real(self, *a))
    args = ["fit", "--config", str(DEFAULT_RECIPE), "--trainer.fast_dev_run=2", "--data.num_workers=0", *QUIET]
    TrainkitCLI([*args, "--data.mix={mixup_alpha: 0.2, cutmix_alpha: 1.0}"])
    assert keys == [(0, 0, 0), (0, 0, 1)], "the 2 training batches, keyed (epoch, rank, batch); no validation batch"


@pytest.mark.parametrize(
    "mix, key",
    [({"mixup_alpha": -1.0}, "data.mix.mixup_alpha"), ({"switch_prob": 2.0, "mixup_alpha": 1.0}, "data.mix.switch_prob"),
     ({}, "data.mix"), ({"mixup_alpa": 1.0}, "mixup_alpha")],
)
def test_bad_mix_values_name_the_key(mix, key):
    from trainkit.data.datamodule import DataModule

    with pytest.raises(ConfigError, match=key):
        DataModule(mix=mix or {"prob": 1.0})
