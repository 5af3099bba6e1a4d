"""The dataset-specific global transition: unigram prior of Eq 119."""
from __future__ import annotations

import numpy as np


def prior_support(valid: np.ndarray, counts: np.ndarray, min_count: int) -> np.ndarray:
    """V_valid of Eq 119: valid tokens (no specials, continuation pieces, punctuation-only) that
    are not extremely rare (train count >= ``min_count``; a token never seen is never support)."""
    counts = np.asarray(counts)
    return np.asarray(valid, dtype=bool) & (counts >= max(min_count, 1))


def unigram_prior(counts: np.ndarray, support: np.ndarray, tau: float) -> np.ndarray:
    """Eq 119: nu_tau(j) = 1{j in V_valid} nu_hat(j)^tau / sum_{k in V_valid} nu_hat(k)^tau.

    ``counts`` are raw train-split token counts; the empirical distribution nu_hat = counts / N has
    the same normalised tau-power as counts^tau, so N cancels. float64 [V], sums to 1, zero outside
    ``support``.
    """
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"tau must be in (0, 1] (Eq 119), got {tau}")
    counts = np.asarray(counts, dtype=np.float64)
    support = np.asarray(support, dtype=bool)
    if counts.shape != support.shape:
        raise ValueError(f"counts {counts.shape} and support {support.shape} differ in shape")
    if (counts < 0).any():
        raise ValueError("unigram counts must be non-negative")
    weights = np.where(support, counts, 0.0) ** tau
    total = weights.sum()
    if not total > 0:
        raise ValueError("the unigram prior has an empty support: no valid token reaches --min-count "
                         "in the train split (lower --min-count or check the preprocess artifact)")
    return weights / total
