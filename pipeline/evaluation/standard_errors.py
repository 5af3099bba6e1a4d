"""Standard errors of a test bound: Monte Carlo over t (given the test sequences), and over sequences.

A continuous-time bound is estimated per sequence from ``H`` t draws, one in each of ``H`` equal strata
of u ~ U(0, 1) (``nelbo._stratified_u``; u -> t is monotone, so the strata are contiguous t intervals).
The estimate of sequence s is the stratified mean m_s = (1/H) sum_h y_{s,h}. Three errors, for three
questions (docs/sampling.md, "Standard errors"):

* ``stderr`` -- Monte Carlo error of the bound on *these* sequences (two evaluations with other seeds
  differ by about this much). Var(m_s) = (1/H^2) sum_h Var(y_{s,h}) has one draw per stratum, so it is
  estimated by collapsing strata in adjacent pairs (a triple when H is odd; Cochran 1977, 5A.12):
  (1/H^2) sum_g n_g/(n_g-1) sum_{h in g} (y_h - ybar_g)^2. It is conservative by the spread of stratum
  means within a group, small for adjacent strata of a smooth integrand.
* ``stderr_iid_draws`` -- the same question answered as if the H draws were independent (the spread
  of the H per-draw totals); correct without stratification, and with it an overstatement: the
  integrand varies by an order of magnitude across t, which the strata take out and this does not.
* ``stderr_sequences`` -- the error of the per-token bound as an estimate of the bound on *the data
  distribution* (the test set a sample of it): the spread of the per-sequence estimates, which holds
  the Monte Carlo error too. A paired difference (the bound against the unigram reference of the same
  tokens) uses it on the per-sequence differences, which cancels the shared difficulty of sequences.
"""
from __future__ import annotations

import math

import torch


def collapsed_strata_variance(y: torch.Tensor) -> torch.Tensor:
    """[S] estimated variance of each row's stratified mean, ``y`` [S, H] one draw per stratum in stratum
    order (H >= 2): adjacent strata in pairs, the last three together when H is odd."""
    S, H = y.shape
    if H < 2:
        raise ValueError("the collapsed-strata estimate needs at least two strata")
    y = y.to(torch.float64)
    cut = H - 3 if H % 2 else H
    pairs = y[:, :cut].reshape(S, -1, 2)
    total = (pairs[..., 0] - pairs[..., 1]).pow(2).sum(-1)  # n/(n-1) * sum (y - ybar)^2 = d^2 for a pair
    if H % 2:
        last = y[:, cut:]
        total = total + 1.5 * (last - last.mean(-1, keepdim=True)).pow(2).sum(-1)
    return total / H**2


def ratio_stderr(values: torch.Tensor, tokens: torch.Tensor) -> float | None:
    """Standard error of sum(values) / sum(tokens) with sequences as the sampling unit (delta method for a
    ratio estimator: per-sequence nats over per-sequence token counts); None for a single sequence."""
    n = values.numel()
    if n < 2:
        return None
    values, tokens = values.to(torch.float64), tokens.to(torch.float64)
    ratio = values.sum() / tokens.sum()
    residual = values - ratio * tokens
    return float(math.sqrt(n / (n - 1) * float(residual.pow(2).sum())) / float(tokens.sum()))


def paired_difference_stderr(values_a: torch.Tensor, tokens_a: torch.Tensor, values_b: torch.Tensor,
                             tokens_b: torch.Tensor) -> float | None:
    """Standard error of sum(values_a)/sum(tokens_a) - sum(values_b)/sum(tokens_b), two models scored on the
    same sequences (row s of each: sequence s), sequences as the sampling unit: the delta method on the
    per-sequence difference of the two linearised ratios. The token counts may differ per model (the AR
    bound never scores a sequence's first token)."""
    n = values_a.numel()
    if n < 2 or values_b.numel() != n:
        return None
    a, ta, b, tb = (x.to(torch.float64) for x in (values_a, tokens_a, values_b, tokens_b))
    residual = (a - a.sum() / ta.sum() * ta) / ta.sum() - (b - b.sum() / tb.sum() * tb) / tb.sum()
    return float(math.sqrt(n / (n - 1) * float(residual.pow(2).sum())))
