"""Semantic-frequency penalty (paper Sec 4.2 Eq 23; App D.3 Eq 114-115), sparse and vectorised.

For a position i and a candidate token k the corrected logit is

    l~_i(k) = l_i(k) - lambda_freq psi(n_i(k)) - lambda_sem psi(m_i(k)),   psi(u) = log(1 + u),

where n_i(k) counts k among the window tokens of i and m_i(k) = sum_l S+(k, l) n_i(l) spreads those
counts over the semantic association S+. Both are sparse: n_i has at most 2W non-zeros and m_i at
most 2W * K (K = neighbours per token), so the correction is a scatter into the logits, never a
dense [B, L, V] intermediate.

Window (our reading of "a window W of recent tokens" for a non-autoregressive sampler): the
positions r with 1 <= |r - i| <= W of the current state, i.e. W tokens on each side, clipped to the
sequence; [MASK] (``ignore_id``) positions are not tokens yet and are not counted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch


@dataclass(frozen=True)
class PenaltyConfig:
    """lambda_freq, lambda_sem and the window radius W of Eq 23 (``--lambda-freq/--lambda-sem/--window``)."""

    lambda_freq: float = 0.0
    lambda_sem: float = 0.0
    window: int = 16

    def __post_init__(self):
        if self.lambda_freq < 0 or self.lambda_sem < 0:
            raise ValueError(f"penalty weights must be >= 0, got lambda_freq={self.lambda_freq}, "
                             f"lambda_sem={self.lambda_sem}")
        if int(self.window) != self.window or self.window < 1:
            raise ValueError(f"window must be a positive integer, got {self.window}")

    @property
    def enabled(self) -> bool:
        return self.lambda_freq > 0 or self.lambda_sem > 0


class SemanticAssociation(NamedTuple):
    """Sparse S+: for a window token l, the tokens ``ids[l]`` it pushes mass to, with ``weights[l]`` >= 0."""

    ids: torch.Tensor  # Long[V, K]
    weights: torch.Tensor  # Float[V, K]


def semantic_association(neighbors: torch.Tensor, similarities: torch.Tensor) -> SemanticAssociation:
    """S+(k, l) = max(cos(k, l), 0) for k among the top-k_max neighbours of l (Eq 114's surrogate).

    Cosine is symmetric, so reading the table row of the window token l gives S+(k, l) for its
    k_max most similar tokens; pairs outside the table count as 0. The diagonal is left out (the
    table never lists a token as its own neighbour): exact repeats are the frequency term's job.
    This is the one place to switch to an S+ stored by the neighbour artifact.
    """
    if neighbors.shape != similarities.shape or neighbors.dim() != 2:
        raise ValueError(f"neighbors {tuple(neighbors.shape)} and similarities {tuple(similarities.shape)} "
                         "must be the same [V, K] shape")
    return SemanticAssociation(neighbors.long(), similarities.float().clamp_min(0.0))


def psi(u: torch.Tensor) -> torch.Tensor:
    """psi(u) = log(1 + u) of Eq 115."""
    return torch.log1p(u)


def window_tokens(x: torch.Tensor, window: int, start: int = 0, length: int | None = None,
                  ignore_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens in the window of positions start..start+length-1 of x [B, L].

    Returns (ids Long[B, P, 2W], counted Bool[B, P, 2W]); n_i(k) (Eq 114) = sum over counted of 1[ids = k].
    """
    B, L = x.shape
    length = L - start if length is None else length
    pos = torch.arange(start, start + length, device=x.device)
    offsets = torch.cat([torch.arange(-window, 0, device=x.device), torch.arange(1, window + 1, device=x.device)])
    r = pos[:, None] + offsets[None]
    inside = (r >= 0) & (r < L)
    ids = x[:, r.clamp(0, L - 1)]
    counted = inside.expand(B, -1, -1).clone()
    if ignore_id is not None:
        counted &= ids != ignore_id
    return ids, counted


_scratch: dict[tuple, torch.Tensor] = {}


def _zero_scratch(like: torch.Tensor) -> torch.Tensor:
    """A zero buffer shaped like ``like``, kept between calls (callers restore the zeros they touch)."""
    key = (tuple(like.shape), like.dtype, like.device)
    buf = _scratch.get(key)
    if buf is None:
        _scratch.clear()  # one buffer at a time: shapes change only between runs
        buf = _scratch[key] = torch.zeros_like(like)
    return buf


def subtract_psi_of_sparse_counts(logits: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                                  lam: float) -> torch.Tensor:
    """logits[n, k] -= lam * psi(u_n(k)) with u_n(k) = sum_m weights[n, m] 1[ids[n, m] = k] (in place).

    u is accumulated by a scatter-add into a zero scratch buffer and read back at the listed ids;
    the corrected logits are written with a plain scatter: duplicate ids write the same value, so
    every distinct k is corrected exactly once. Only the touched entries of the buffer are reset,
    so a call costs O(entries), not O(vocabulary): no sort, no dense pass over [N, V].
    """
    u = _zero_scratch(logits)
    u.scatter_add_(-1, ids, weights.to(logits.dtype))
    counts = u.gather(-1, ids)
    u.scatter_(-1, ids, 0.0)
    corrected = logits.gather(-1, ids) - lam * psi(counts)
    return logits.scatter_(-1, ids, corrected)


def apply_semantic_frequency_penalty(logits: torch.Tensor, x: torch.Tensor, cfg: PenaltyConfig,
                                     association: SemanticAssociation | None = None, start: int = 0,
                                     ignore_id: int | None = None, inplace: bool = False) -> torch.Tensor:
    """Eq 23 / Eq 115 on logits [B, P, V] of positions start..start+P-1 of the current state x [B, L].

    Returns corrected float logits; the input is left untouched unless ``inplace`` (float32 input).
    """
    if not cfg.enabled:
        return logits
    if cfg.lambda_sem > 0 and association is None:
        raise ValueError("lambda_sem > 0 needs the semantic association S+ (the neighbour tables)")
    B, P, V = logits.shape
    ids, counted = window_tokens(x, cfg.window, start, P, ignore_id)
    out = logits.float()
    if not inplace and out.data_ptr() == logits.data_ptr():
        out = out.clone()  # .float() of a float32 tensor is the tensor itself
    out = out.reshape(B * P, V)
    flat_ids, flat_w = ids.reshape(B * P, -1), counted.reshape(B * P, -1).float()
    if cfg.lambda_freq > 0:  # n_i(k)
        subtract_psi_of_sparse_counts(out, flat_ids, flat_w, cfg.lambda_freq)
    if cfg.lambda_sem > 0:  # m_i(k) = sum_l S+(k, l) n_i(l), Eq 114
        sem_ids = association.ids[flat_ids].reshape(B * P, -1)
        sem_w = (association.weights[flat_ids] * flat_w.unsqueeze(-1)).reshape(B * P, -1)
        subtract_psi_of_sparse_counts(out, sem_ids, sem_w, cfg.lambda_sem)
    return out.reshape(B, P, V)
