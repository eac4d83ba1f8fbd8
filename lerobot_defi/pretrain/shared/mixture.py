"""Weighted mixtures of datasets, reproducible and resumable across processes.

* :class:`MixtureDataset`: concatenation whose keys are ``(global_index, sample_seed)``; a member with a
  ``sample(local_index, rng)`` method gets a ``numpy.random.Generator`` seeded by the sampler, so per-sample random
  choices are reproducible and resumable.
* :class:`MixtureSampler`: draws a member by weight for every position of an epoch, then walks a per-epoch
  permutation of that member; deterministic in ``(seed, epoch)``; sharded (``rank::world_size``), so build one
  DataLoader per process and do NOT pass it through ``accelerator.prepare``; ``resume(samples_seen)`` skips what
  this rank already consumed; ``infinite=True`` runs on across epochs (step-based loops). Give the DataLoader its
  own ``generator=torch.Generator()`` so that creating it does not draw from the global RNG (exact resume).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Dataset, Sampler


class MixtureDataset(Dataset):
    """Concatenation of datasets addressed by ``(global_index, sample_seed)`` keys (or plain ints).

    Members with a ``sample(local_index, rng)`` method receive ``numpy.random.default_rng(sample_seed)``;
    others are indexed normally. Dict items get ``"source_index"`` (position of the member dataset).
    """

    def __init__(self, datasets: Sequence[Dataset]):
        if not datasets:
            raise ValueError("MixtureDataset needs at least one dataset")
        self.datasets = list(datasets)
        self.sizes = [len(d) for d in self.datasets]
        empty = [i for i, n in enumerate(self.sizes) if n == 0]
        if empty:
            raise ValueError(f"MixtureDataset: member dataset(s) {empty} are empty")
        self.offsets = np.cumsum([0, *self.sizes]).tolist()

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, index: int) -> tuple[int, int]:
        """``global index -> (member, local index)``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a mixture of {len(self)} items")
        member = bisect_right(self.offsets, index) - 1
        return member, index - self.offsets[member]

    def __getitem__(self, key):
        # plain int access (no sampler): the index is the sample seed
        index, seed = key if isinstance(key, tuple) else (key, int(key))
        member, local = self.locate(int(index))
        dataset = self.datasets[member]
        if hasattr(dataset, "sample"):
            item = dataset.sample(local, np.random.default_rng(seed))
        else:
            item = dataset[local]
        if isinstance(item, dict):
            item["source_index"] = member
        return item


class MixtureSampler(Sampler):
    """Weighted mixture sampling over member datasets, sharded across processes.

    Each epoch has ``num_samples`` positions (default: the largest member, as the official loader); position
    ``p`` draws a member with probability ``weights[m]`` and takes the next item of that member's epoch
    permutation (a member is exhausted before any item repeats). Yields ``(global_index, sample_seed)``.
    Process ``rank`` gets positions ``rank, rank + world_size, ...`` of the epoch (padded so all ranks get
    the same count). The order depends only on ``(seed, epoch)``. ``infinite``: run on into the next epochs
    (a step-based loop then consumes exactly ``batch_size`` samples per step, which ``resume`` relies on).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        weights: Sequence[float] | None = None,
        *,
        num_samples: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        infinite: bool = False,
    ):
        if not sizes or any(n <= 0 for n in sizes):
            raise ValueError(f"MixtureSampler: every member needs at least one item, sizes={list(sizes)}")
        weights = [1.0] * len(sizes) if weights is None else list(weights)
        if len(weights) != len(sizes) or any(not w > 0 for w in weights):
            raise ValueError(f"MixtureSampler: need one positive weight per member, got {weights}")
        if not 0 <= rank < world_size:
            raise ValueError(f"MixtureSampler: rank {rank} outside world size {world_size}")
        self.sizes = list(sizes)
        self.probabilities = np.asarray(weights, dtype=np.float64) / sum(weights)
        self.offsets = np.cumsum([0, *self.sizes])[:-1]
        self.num_samples = int(num_samples or max(self.sizes))
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.infinite = infinite
        self.epoch = 0
        self.skip = 0

    @property
    def samples_per_rank(self) -> int:
        return -(-self.num_samples // self.world_size)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch (and skip this rank's first ``skip`` samples of it)."""
        self.epoch, self.skip = epoch, skip

    def resume(self, samples_seen: int) -> None:
        """Position the sampler after ``samples_seen`` samples of this rank (epochs included)."""
        self.set_epoch(*divmod(samples_seen, self.samples_per_rank))

    def epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """``(global_indices, sample_seeds)`` of the whole epoch, all ranks, ``(samples_per_rank*world,)``."""
        rng = np.random.default_rng([self.seed, epoch])
        total = self.samples_per_rank * self.world_size
        members = rng.choice(len(self.sizes), size=total, p=self.probabilities)
        indices = np.empty(total, dtype=np.int64)
        for member, size in enumerate(self.sizes):
            where = np.flatnonzero(members == member)
            if len(where) == 0:
                continue
            laps = -(-len(where) // size)
            order = np.concatenate([rng.permutation(size) for _ in range(laps)])[: len(where)]
            indices[where] = self.offsets[member] + order
        seeds = rng.integers(0, 2**62, size=total, dtype=np.int64)
        return indices, seeds

    def __len__(self) -> int:
        """Samples left in the current epoch for this rank (an ``infinite`` sampler goes on after them)."""
        return self.samples_per_rank - self.skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, skip = self.epoch, self.skip
        mine = slice(self.rank, None, self.world_size)
        while True:
            indices, seeds = self.epoch_order(epoch)
            yield from list(zip(indices[mine].tolist(), seeds[mine].tolist()))[skip:]
            if not self.infinite:
                return
            epoch, skip = epoch + 1, 0
