"""A training loader that resumes mid-epoch with the batches not yet seen.

Lightning stores the ``state_dict`` of a loader that has one in every checkpoint and gives
it back on resume; without it, a checkpoint saved mid-epoch (preemption, step checkpoints)
replays the epoch from its first batch and Lightning's epoch bookkeeping goes wrong.
"""

from __future__ import annotations

from typing import Any, Iterator

from torch.utils.data import DataLoader, Dataset, DistributedSampler


class EpochSampler(DistributedSampler):
    """One permutation per (seed, epoch), rank r taking every world_size-th index; it can
    start part-way through an epoch.

    The same sampler serves every world size, so 2 ranks x batch b see the same samples per
    step as 1 process x batch 2b, and the order depends on nothing but the seed and the epoch.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.start = 0  # indices of this rank already served in the current epoch

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())[self.start :]
        self.start = 0  # only the first pass after a resume is partial
        return iter(indices)


class ResumableLoader(DataLoader):
    """A DataLoader over an :class:`EpochSampler` whose position is part of the checkpoint."""

    def __init__(self, dataset: Dataset, sampler: EpochSampler, **kwargs: Any):
        super().__init__(dataset, sampler=sampler, **kwargs)
        self.served = 0  # batches yielded in the current epoch

    def __iter__(self) -> Iterator[Any]:
        skipped = self.sampler.start // self.batch_size
        self.served = skipped
        for batch in super().__iter__():
            self.served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.sampler.epoch), "served": int(self.served)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.set_epoch(state["epoch"])
        self.sampler.start = state["served"] * self.batch_size
