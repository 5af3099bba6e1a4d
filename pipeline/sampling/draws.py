"""Categorical draws in float64 and top-k / top-p truncation, vectorised over [..., V].

Why float64: a Gumbel-max draw in float32 cannot produce the far tail of a 30k-way softmax
(the Gumbel noise saturates), which silently lowers the entropy of samples and *inflates* their
apparent quality (Zheng et al. 2024, "Masked diffusion models are secretly time-agnostic masked
models and exploit inaccurate categorical sampling"). Every sampler of this package draws through
:func:`categorical` on float64 probabilities by inverse-CDF sampling.
"""
from __future__ import annotations

import torch


def categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of ``probs`` [..., V] (non-negative, not necessarily normalised), in float64.

    Inverse-CDF: u ~ U[0, 1) in float64 is scaled by the row total and located in the cumulative
    sum; zero-probability tokens are never returned. Returns Long[...].
    """
    p = probs.to(torch.float64)
    cdf = torch.cumsum(p, dim=-1)
    total = cdf[..., -1:]
    if bool((total <= 0).any()) or not bool(torch.isfinite(total).all()):
        raise ValueError("categorical: every row needs a positive, finite total probability")
    u = torch.rand(total.shape, generator=generator, device=p.device, dtype=torch.float64) * total
    idx = torch.searchsorted(cdf, u, right=True).clamp_max(p.shape[-1] - 1)
    # searchsorted(right=True) skips zero-width bins except when u lands exactly on a flat run end;
    # the guard below moves such a draw to the next token with mass (probability ~0 in float64).
    bad = p.gather(-1, idx) <= 0
    if bool(bad.any()):
        idx = torch.where(bad, (p > 0).to(torch.int8).argmax(-1, keepdim=True), idx)
    return idx.squeeze(-1)


def truncate(probs: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Renormalised top-k and/or nucleus (top-p) truncation of probabilities [..., V] (float64).

    top-p keeps the smallest set of most probable tokens whose mass reaches ``top_p`` (the token
    that crosses the threshold is kept, so at least one token always survives).
    """
    p = probs.to(torch.float64)
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if top_k < p.shape[-1]:
            kth = torch.topk(p, top_k, dim=-1).values[..., -1:]
            p = torch.where(p >= kth, p, torch.zeros_like(p))
    if top_p is not None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if top_p < 1.0:
            sorted_p, order = torch.sort(p, dim=-1, descending=True)
            mass_before = torch.cumsum(sorted_p, -1) - sorted_p
            keep_sorted = mass_before < top_p * sorted_p.sum(-1, keepdim=True)
            keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
            p = torch.where(keep, p, torch.zeros_like(p))
    return p / p.sum(-1, keepdim=True)
