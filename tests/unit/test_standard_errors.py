"""The test bound's standard errors (pipeline/evaluation/standard_errors.py) against exact variances.

A stratified estimate of E[f(U) + noise] with one draw per stratum (f: how the integrand varies with t;
noise: the draw of x_t at that t) has an exact variance computable by quadrature. The collapsed-strata
estimate must not fall below it and must be well under the spread of the draws taken as independent.
"""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.evaluation.standard_errors import collapsed_strata_variance, paired_difference_stderr, ratio_stderr


def f(u: torch.Tensor) -> torch.Tensor:
    return 1.0 / (0.05 + u) + 3 * u  # a bound integrand's shape: steep at one end, then a trend


NOISE = 1.0


def exact_stratified_variance(H: int, grid: int = 20000) -> float:
    """Var((1/H) sum_h [f(U_h) + NOISE * e_h]), U_h ~ U(h/H, (h+1)/H), by quadrature over each stratum."""
    total = 0.0
    for h in range(H):
        u = (h + (torch.arange(grid, dtype=torch.float64) + 0.5) / grid) / H
        total += float(f(u).var(unbiased=False)) + NOISE**2
    return total / H**2


@pytest.mark.parametrize("H", [16, 7])
def test_collapsed_strata_is_conservative_and_tighter_than_independent_draws(H):
    g = torch.Generator().manual_seed(0)
    S = 4000
    u = (torch.arange(H, dtype=torch.float64) + torch.rand(S, H, generator=g, dtype=torch.float64)) / H
    y = f(u) + NOISE * torch.randn(S, H, generator=g, dtype=torch.float64)
    exact = exact_stratified_variance(H)
    assert float(y.mean(-1).var()) == pytest.approx(exact, rel=0.1)  # the simulation agrees with the quadrature
    estimate = float(collapsed_strata_variance(y).mean())
    iid = float(y.var(-1).mean()) / H  # the draws taken as independent
    assert exact <= estimate <= 2.5 * exact  # conservative by the trend between adjacent strata
    assert estimate < (0.5 if H == 16 else 0.9) * iid


def test_collapsed_strata_needs_two_strata():
    with pytest.raises(ValueError, match="two strata"):
        collapsed_strata_variance(torch.zeros(3, 1))


def test_ratio_stderr_reduces_to_the_standard_error_of_a_mean():
    values = torch.tensor([3.0, 5.0, 4.0, 8.0], dtype=torch.float64)
    equal = torch.full((4,), 2.0, dtype=torch.float64)  # equal lengths: the per-token ratio is the mean of values / 2
    expected = float((values / 2).std() / math.sqrt(4))
    assert ratio_stderr(values, equal) == pytest.approx(expected, rel=1e-12)
    assert ratio_stderr(values[:1], equal[:1]) is None


def test_ratio_stderr_matches_the_spread_over_resampled_test_sets():
    g = torch.Generator().manual_seed(1)
    N = 200
    population_tokens = torch.randint(5, 40, (20000,), generator=g).double()
    population_values = population_tokens * (2 + torch.rand(20000, generator=g, dtype=torch.float64))
    draws = torch.randint(0, 20000, (2000, N), generator=g)
    ratios = population_values[draws].sum(-1) / population_tokens[draws].sum(-1)
    one = draws[0]
    assert ratio_stderr(population_values[one], population_tokens[one]) == pytest.approx(float(ratios.std()),
                                                                                          rel=0.2)


def test_paired_difference_of_two_models_on_the_same_sequences():
    g = torch.Generator().manual_seed(2)
    N = 300
    tokens = torch.randint(5, 40, (N,), generator=g).double()
    hard = 2 + torch.rand(N, generator=g, dtype=torch.float64)  # how hard each sequence is, for both models
    a = tokens * (hard + 0.3 * torch.rand(N, generator=g, dtype=torch.float64))
    b = (tokens - 1) * (hard + 0.1)  # the AR baseline scores one token fewer per sequence
    se = paired_difference_stderr(a, tokens, b, tokens - 1)
    assert paired_difference_stderr(a, tokens, torch.zeros(N), tokens) == pytest.approx(ratio_stderr(a, tokens))
    assert paired_difference_stderr(a, tokens, a, tokens) == 0.0
    assert se < 0.5 * math.hypot(ratio_stderr(a, tokens), ratio_stderr(b, tokens - 1))  # the shared difficulty cancels
    # against the spread of the difference over test sets resampled from the same population
    draws = torch.randint(0, N, (3000, N), generator=g)
    diffs = a[draws].sum(-1) / tokens[draws].sum(-1) - b[draws].sum(-1) / (tokens - 1)[draws].sum(-1)
    assert se == pytest.approx(float(diffs.std()), rel=0.15)
