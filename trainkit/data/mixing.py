"""Batch-level mixup and cutmix (``data.mix``), on the training device.

Mixing pairs every sample with another one of the same batch (a random permutation) and
mixes inputs and one-hot targets with one weight ``lam ~ Beta(alpha, alpha)`` per batch:
mixup blends whole inputs, cutmix pastes a box of the partner image whose area is ``1 - lam``
(the weight is recomputed from the box after clipping, so targets match the pixels exactly).
The loss then uses the soft targets; metrics keep the original hard labels.

Every draw of a batch is a function of (seed, epoch, rank, batch index), the ``key`` the data
module passes: there is no generator state to lose, so a resumed run (mid-epoch too) mixes
exactly as an uninterrupted one. The Python scalars (whether to mix, cutmix or mixup, lam, the
box) come from a NumPy generator on the host, which needs no transfer; the permutation is drawn
by a torch generator on the batch's device, so a step reads no tensor value on the host.
Written by hand because Lightning/torchmetrics have none and timm's Mixup is in the optional
vision extra.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from trainkit.errors import ConfigError


class BatchMixer:
    """Mixup / cutmix for one batch.

    Args:
        mixup_alpha: Beta parameter of mixup (0: off).
        cutmix_alpha: Beta parameter of cutmix (0: off); images only.
        switch_prob: with both on, the probability that a batch uses cutmix instead of mixup.
        prob: probability that a batch is mixed at all.
        seed: seed of the mixer's draws (weights, boxes, partners).
    """

    def __init__(
        self, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, switch_prob: float = 0.5, prob: float = 1.0, seed: int = 0
    ):
        for key, v in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
            if v < 0:
                raise ConfigError(f"must be >= 0, got {v}", f"data.mix.{key}")
        for key, v in (("switch_prob", switch_prob), ("prob", prob)):
            if not 0 <= v <= 1:
                raise ConfigError(f"must be in [0, 1], got {v}", f"data.mix.{key}")
        if mixup_alpha == 0 and cutmix_alpha == 0:
            raise ConfigError("set mixup_alpha or cutmix_alpha > 0 (or drop data.mix)", "data.mix")
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.switch_prob, self.prob, self.seed = switch_prob, prob, seed
        self._gens: dict[Any, torch.Generator] = {}

    def __call__(self, x: torch.Tensor, y: torch.Tensor, num_classes: int,
                 key: tuple[int, ...] = (0,)) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed inputs and soft targets ``(N, num_classes)`` whose rows sum to one.

        ``key``: what the batch's draws are a function of, with the seed: (epoch, rank, batch index).
        """
        dtype = x.dtype if x.is_floating_point() else torch.float32
        # one-hot by scatter: F.one_hot checks the label range with a host read on the CPU
        target = torch.zeros(len(y), num_classes, dtype=dtype, device=y.device).scatter_(1, y[:, None], 1.0)
        rng = np.random.default_rng([self.seed % (1 << 63), *key])
        if rng.random() >= self.prob:
            return x, target
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or rng.random() < self.switch_prob)
        gen = self._gens.get(x.device)
        if gen is None:
            gen = self._gens[x.device] = torch.Generator(device=x.device)
        gen.manual_seed(int(rng.integers(1 << 62)))  # host-side: no device sync
        perm = torch.randperm(len(y), generator=gen, device=x.device)
        if use_cutmix:
            if x.ndim != 4:
                raise ConfigError(f"cutmix needs images (N,C,H,W), got inputs of shape {tuple(x.shape)}", "data.mix.cutmix_alpha")
            lam = float(rng.beta(self.cutmix_alpha, self.cutmix_alpha))
            (y0, y1, x0, x1), lam = cutmix_box(x.shape[-2:], lam, rng)
            x = x.clone()
            x[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
        else:
            lam = float(rng.beta(self.mixup_alpha, self.mixup_alpha))
            x = lam * x + (1 - lam) * x[perm]
        return x, lam * target + (1 - lam) * target[perm]


def cutmix_box(hw: tuple[int, int], lam: float, rng: np.random.Generator) -> tuple[tuple[int, int, int, int], float]:
    """A box of about ``(1 - lam)`` of the image, centred at random and clipped to it.

    Returns the box ``(y0, y1, x0, x1)`` and the weight of the original image, ``1 - box area
    / image area`` after clipping.

    >>> box, lam = cutmix_box((10, 10), 1.0, np.random.default_rng(0))
    >>> lam
    1.0
    """
    h, w = int(hw[0]), int(hw[1])
    ch, cw = int(h * np.sqrt(1 - lam)), int(w * np.sqrt(1 - lam))
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y0, y1 = np.clip([cy - ch // 2, cy + ch - ch // 2], 0, h)
    x0, x1 = np.clip([cx - cw // 2, cx + cw - cw // 2], 0, w)
    return (int(y0), int(y1), int(x0), int(x1)), float(1.0 - (y1 - y0) * (x1 - x0) / (h * w))
