"""Semantic-frequency penalty (paper Sec 4.2 Eq 23; App D.3 Eq 114-115), sparse and vectorised.

For a position i and a candidate token k the corrected logit is

    l~_i(k) = l_i(k) - lambda_freq psi(n_i(k)) - lambda_sem psi(m_i(k)),   psi(u) = log(1 + u),

where n_i(k) counts k among the window tokens of i and m_i(k) = sum_l S+(k, l) n_i(l) spreads those
counts over the semantic association S+. Both are sparse: n_i has at most 2W non-zeros and m_i at
most sum of the S+ column sizes of the window tokens, so the correction is a scatter into the
logits, never a dense [B, L, V] intermediate.

S+ is the neighbour artifact's (``semantic_assoc_indices.npy`` / ``semantic_assoc_weights.npy``:
diagonal 1 plus max(cos, 0) over each token's nearest neighbours; built by
``pipeline.common.neighbor_artifact.semantic_association_rows``), see :func:`association_by_columns`;
with the diagonal, m_i(k) >= n_i(k), and S+ = I reduces Eq 114 to the frequency count (App D.3).

Window ("the count of token l in a recent window W", Sec 4.2): ``window_side="left"`` (default) reads
"recent" in generation order, which for the left-to-right semi-autoregressive sampler is the W
positions before i (r = i - W .. i - 1 of the current state; App D.1 derives the rollout bias from
the tokens already produced); ``"both"`` counts W positions on each side (1 <= |r - i| <= W), a
reading for a fully parallel sampler that sees both sides. Clipped to the sequence; [MASK]
(``ignore_id``) positions are not tokens yet and are not counted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

WINDOW_SIDES = ("left", "both")


@dataclass(frozen=True)
class PenaltyConfig:
    """lambda_freq, lambda_sem and the window W of Eq 23 (``--lambda-freq/--lambda-sem/--window/--window-side``)."""

    lambda_freq: float = 0.0
    lambda_sem: float = 0.0
    window: int = 16
    window_side: str = "left"  # left: the W positions before i (the paper's "recent window"); both: W each side

    def __post_init__(self):
        if self.window_side not in WINDOW_SIDES:
            raise ValueError(f"window_side must be one of {WINDOW_SIDES}, got {self.window_side!r}")
        if self.lambda_freq < 0 or self.lambda_sem < 0:
            raise ValueError(f"penalty weights must be >= 0, got lambda_freq={self.lambda_freq}, "
                             f"lambda_sem={self.lambda_sem}")
        if int(self.window) != self.window or self.window < 1:
            raise ValueError(f"window must be a positive integer, got {self.window}")

    @property
    def enabled(self) -> bool:
        return self.lambda_freq > 0 or self.lambda_sem > 0


class SemanticAssociation(NamedTuple):
    """S+ by columns (CSR): window token l spreads weight ``weights[e]`` = S+(k, l) to k = ``targets[e]``
    for e in ptr[l] .. ptr[l + 1] - 1 (only positive entries are stored)."""

    ptr: torch.Tensor  # Long[V + 1]
    targets: torch.Tensor  # Long[E]
    weights: torch.Tensor  # Float[E]


def association_by_columns(indices: torch.Tensor, weights: torch.Tensor) -> SemanticAssociation:
    """S+ of Eq 114 from the neighbour artifact's row form: S+(k, indices[k, j]) = weights[k, j].

    The artifact stores ``semantic_assoc_indices.npy`` / ``semantic_assoc_weights.npy`` [V, 1 + assoc_k]
    (column 0 the diagonal with weight 1, then max(cos, 0) over k's nearest neighbours); the penalty
    needs S+ by columns (which k does a window token l push mass to), so the rows are transposed once.
    """
    indices, weights = torch.as_tensor(indices).long(), torch.as_tensor(weights).float()
    if indices.shape != weights.shape or indices.dim() != 2:
        raise ValueError(f"S+ indices {tuple(indices.shape)} and weights {tuple(weights.shape)} must be the "
                         "same [V, J] shape")
    V, J = indices.shape
    if (weights < 0).any():
        raise ValueError("S+ weights must be >= 0 (a positive association)")
    rows = torch.arange(V, device=indices.device).repeat_interleave(J)
    cols, w = indices.reshape(-1), weights.reshape(-1)
    keep = w > 0
    rows, cols, w = rows[keep], cols[keep], w[keep]
    order = torch.argsort(cols, stable=True)
    ptr = torch.zeros(V + 1, dtype=torch.long, device=indices.device)
    ptr[1:] = torch.cumsum(torch.bincount(cols, minlength=V), 0)
    return SemanticAssociation(ptr, rows[order], w[order])


def expand_association(assoc: SemanticAssociation, tokens: torch.Tensor, counts: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For flat window tokens [M] with counts [M]: (owner [E] in 0..M-1, target k [E], weight S+(k, l) n [E])."""
    active = counts > 0
    start = assoc.ptr[tokens]
    sizes = (assoc.ptr[tokens + 1] - start) * active
    owner = torch.repeat_interleave(torch.arange(tokens.numel(), device=tokens.device), sizes)
    first = torch.cumsum(sizes, 0) - sizes
    entry = start[owner] + torch.arange(owner.numel(), device=tokens.device) - first[owner]
    return owner, assoc.targets[entry], assoc.weights[entry] * counts[owner]


def psi(u: torch.Tensor) -> torch.Tensor:
    """psi(u) = log(1 + u) of Eq 115."""
    return torch.log1p(u)


def window_tokens(x: torch.Tensor, window: int, start: int = 0, length: int | None = None,
                  ignore_id: int | None = None, side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens in the window of positions start..start+length-1 of x [B, L] (``side``: left or both).

    Returns (ids Long[B, P, W or 2W], counted Bool[...]); n_i(k) (Eq 114) = sum over counted of 1[ids = k].
    """
    B, L = x.shape
    length = L - start if length is None else length
    pos = torch.arange(start, start + length, device=x.device)
    offsets = torch.arange(-window, 0, device=x.device)
    if side == "both":
        offsets = torch.cat([offsets, torch.arange(1, window + 1, device=x.device)])
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


def subtract_psi_of_sparse_counts(logits_flat: torch.Tensor, index: torch.Tensor, weights: torch.Tensor,
                                  lam: float) -> torch.Tensor:
    """logits_flat[j] -= lam * psi(u_j) with u_j = sum of ``weights`` over the entries with index j (in place).

    ``logits_flat`` is [N * V] (position n, token k at n * V + k). u is accumulated into a zero
    scratch buffer and read back at the listed entries; the corrected logits are written with a plain
    index_put: duplicate entries write the same value, so every (n, k) is corrected exactly once. Only
    the touched entries of the buffer are reset: a call costs O(entries), never O(N V).
    """
    u = _zero_scratch(logits_flat)
    u.index_add_(0, index, weights.to(logits_flat.dtype))
    totals = u[index]
    u[index] = 0.0
    logits_flat[index] = logits_flat[index] - lam * psi(totals)
    return logits_flat


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
    ids, counted = window_tokens(x, cfg.window, start, P, ignore_id, cfg.window_side)
    out = logits.float()
    if not inplace and out.data_ptr() == logits.data_ptr():
        out = out.clone()  # .float() of a float32 tensor is the tensor itself
    out = out.reshape(B * P, V).contiguous()
    flat_ids, flat_w = ids.reshape(-1), counted.reshape(-1).float()  # [B P 2W]
    position = torch.arange(B * P, device=x.device).repeat_interleave(ids.shape[-1])
    logits_flat = out.view(-1)
    if cfg.lambda_freq > 0:  # n_i(k)
        subtract_psi_of_sparse_counts(logits_flat, position * V + flat_ids, flat_w, cfg.lambda_freq)
    if cfg.lambda_sem > 0:  # m_i(k) = sum_l S+(k, l) n_i(l), Eq 114
        owner, target, weight = expand_association(association, flat_ids, flat_w)
        subtract_psi_of_sparse_counts(logits_flat, position[owner] * V + target, weight, cfg.lambda_sem)
    return out.reshape(B, P, V)
