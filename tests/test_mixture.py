"""The weighted mixture sampler of the pretraining runs: weights, exhausting a member before repeating, shards
that together make the epoch, exact resume across epochs."""

import numpy as np

from lerobot_defi.pretrain.shared.mixture import MixtureSampler


def test_mixture_sampler_weights_shards_and_resume():
    sizes, weights = [50, 10, 400], [0.4, 0.2, 0.4]
    full = MixtureSampler(sizes, weights, num_samples=3000, seed=3)
    indices, seeds = full.epoch_order(0)
    members = np.searchsorted(np.cumsum(sizes), indices, side="right")
    np.testing.assert_allclose(np.bincount(members) / len(indices), weights, atol=0.03)
    # a member is exhausted before any of its items repeats
    first_small = indices[members == 1][:10]
    assert sorted(first_small.tolist()) == list(range(50, 60))

    ranks = [MixtureSampler(sizes, weights, num_samples=3000, seed=3, rank=r, world_size=2) for r in (0, 1)]
    shards = [list(s) for s in ranks]
    assert len(shards[0]) == len(shards[1]) == 1500
    interleaved = [pair[r] for pair in zip(*shards) for r in (0, 1)]
    assert [i for i, _ in interleaved] == indices.tolist()  # disjoint positions, together the whole epoch
    assert [s for _, s in interleaved] == seeds.tolist()

    stream = MixtureSampler(sizes, weights, num_samples=100, seed=3, rank=1, world_size=2, infinite=True)
    it = iter(stream)
    straight = [next(it) for _ in range(130)]  # crosses into epoch 2
    resumed = MixtureSampler(sizes, weights, num_samples=100, seed=3, rank=1, world_size=2, infinite=True)
    resumed.resume(77)
    it = iter(resumed)
    assert [next(it) for _ in range(53)] == straight[77:]
    assert MixtureSampler(sizes, weights, num_samples=100, seed=4).epoch_order(0)[0].tolist() != (
        MixtureSampler(sizes, weights, num_samples=100, seed=3).epoch_order(0)[0].tolist()
    )
