"""A training loader that resumes mid-epoch with the batches not yet seen.

Lightning stores the ``state_dict`` of a loader that has one in every checkpoint and gives
it back on resume; without it, a checkpoint saved mid-epoch (preemption, step checkpoints)
replays the epoch from its first batch and Lightning's epoch bookkeeping goes wrong.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import torch
from torch.utils.data import Dataset, DistributedSampler

from trainkit.data.samples import CheckedLoader


class EpochSampler(DistributedSampler):
    """One permutation per (seed, epoch), rank r taking every world_size-th index; it can
    start part-way through an epoch.

    The same sampler serves every world size, so 2 ranks x batch b see the same samples per
    step as 1 process x batch 2b, and the order depends on nothing but the seed and the epoch.

    Args:
        keyed: yield ``(epoch, index)`` pairs instead of indices, for datasets whose samples
            draw random augmentations from (seed, epoch, index): a DataLoader worker then
            needs no epoch state of its own (persistent or not, any number of workers).
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, keyed: bool = False):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.start = 0  # indices of this rank already served in the current epoch
        self.keyed = keyed

    def __iter__(self) -> Iterator[Any]:
        indices = list(super().__iter__())[self.start :]
        self.start = 0  # only the first pass after a resume is partial
        if self.keyed:
            return iter([(self.epoch, i) for i in indices])
        return iter(indices)


class ResumableLoader(CheckedLoader):
    """A DataLoader over an :class:`EpochSampler` whose position is part of the checkpoint.

    Its own generator is re-seeded from (seed, epoch) before every epoch: creating a
    DataLoader iterator draws the workers' base seed from it, which would otherwise come from
    (and advance) the global torch generator, so a resumed run would draw different dropout
    masks than an uninterrupted one, and worker seeds would depend on the run's history.

    Args:
        dataset, sampler: as for DataLoader.
        progress: batches the trainer has processed in the current epoch. The loader itself
            runs ahead of the training step (Lightning prefetches a batch), so its own count
            would skip a batch on resume.
        **kwargs: DataLoader arguments.
    """

    def __init__(self, dataset: Dataset, sampler: EpochSampler, progress: Callable[[], int] | None = None, **kwargs: Any):
        super().__init__(dataset, sampler=sampler, generator=torch.Generator(), **kwargs)
        self.progress = progress
        self.served = 0  # batches yielded in the current epoch
        self._resume: tuple[int, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        sampler = self.sampler
        self.generator.manual_seed(sampler.seed * 100_003 + sampler.epoch)
        if self._resume is not None and self._resume[0] == sampler.epoch:
            sampler.start = self._resume[1] * self.batch_size
        self._resume = None
        self.served = sampler.start // self.batch_size
        for batch in super().__iter__():
            self.served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        served = self.progress() if self.progress is not None else self.served
        return {"epoch": int(self.sampler.epoch), "served": int(served)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        # applied when the epoch it belongs to starts (an epoch-end checkpoint never skips)
        self._resume = (state["epoch"], state["served"])
        self.sampler.set_epoch(state["epoch"])
