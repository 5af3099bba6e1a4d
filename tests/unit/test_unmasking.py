"""Unmasking-size schedules: sums, positivity, randomness, exact size distribution, position choice."""
import numpy as np
import pytest
import torch

from pipeline.sampling.unmasking import (
    SCHEDULES,
    fixed_sizes,
    schedule_sizes,
    select_positions,
    size_distribution,
    sizes_from_shift,
)


@pytest.mark.parametrize("L,K", [(1, 1), (7, 3), (32, 6), (64, 64), (100, 7)])
def test_every_schedule_sums_to_L_with_positive_sizes(L, K):
    gen = torch.Generator().manual_seed(0)
    for name in SCHEDULES:
        for _ in range(5):
            sizes = schedule_sizes(name, L, K, generator=gen)
            assert len(sizes) == K and sum(sizes) == L and min(sizes) >= 1, (name, sizes)


def test_fixed_sizes_are_balanced():
    sizes = fixed_sizes(10, 3)
    assert sorted(sizes) == [3, 3, 4]
    assert max(fixed_sizes(1000, 7)) - min(fixed_sizes(1000, 7)) <= 1


def test_randomized_sizes_vary_across_seeds_and_follow_their_shape():
    for name in ("tc", "dtc"):
        draws = {tuple(schedule_sizes(name, 48, 6, generator=np.random.default_rng(s))) for s in range(20)}
        assert len(draws) > 3, name
    # tc reveals big blocks early and small ones late; dtc the reverse.
    tc, dtc = sizes_from_shift(48, 6, "tc", 0.5), sizes_from_shift(48, 6, "dtc", 0.5)
    assert tc[-1] < max(tc[:3]) and dtc[0] < max(dtc[-3:])


@pytest.mark.parametrize("name", ["tc", "dtc"])
def test_size_distribution_is_exact(name):
    L, K = 20, 5
    dist = size_distribution(name, L, K)
    assert abs(sum(p for p, _ in dist) - 1.0) < 1e-12
    # Probabilities match the frequencies of a fine grid of shifts.
    grid = (np.arange(20000) + 0.5) / 20000
    freq: dict = {}
    for u in grid:
        key = tuple(sizes_from_shift(L, K, name, float(u)))
        freq[key] = freq.get(key, 0) + 1 / len(grid)
    assert set(freq) == {s for _, s in dist}
    for p, s in dist:
        assert abs(freq[s] - p) < 2e-3, (s, p, freq[s])


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        fixed_sizes(5, 6)
    with pytest.raises(ValueError):
        schedule_sizes("cosine", 5, 2)
    with pytest.raises(ValueError):
        sizes_from_shift(5, 2, "tc", 1.0)


def test_select_positions_is_a_uniform_subset_of_masked():
    masked = torch.tensor([[True, False, True, True, False, True]] * 4000)
    counts = torch.full((4000,), 2)
    chosen = select_positions(masked, counts, generator=torch.Generator().manual_seed(1))
    assert not (chosen & ~masked).any()
    assert (chosen.sum(1) == 2).all()
    freq = chosen.float().mean(0)[masked[0]]
    assert torch.allclose(freq, torch.full_like(freq, 0.5), atol=0.03)
    with pytest.raises(ValueError):
        select_positions(masked[:1], 5)
