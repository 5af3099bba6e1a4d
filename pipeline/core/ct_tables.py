"""The kernel's tables the continuous-time ELBO and the ctmc sampler read (docs/likelihood.md, Sec 6).

Per distinct t: the schedule values, the local branch's rank weights lam_t s_t(r | v) and their time
derivative, and the forward outflow S_v(t) = sum_y [d/dt q_t(y | v)]_+ (:func:`time_tables`, O(V K) per t).
Per kernel, once: nu at the table entries and the inverse neighbour index (which v list z, at which rank),
so the sparse integrand of pipeline/core/ct_elbo.py visits O(K * in-degree) entries per position.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from pipeline.core.kernels import Kernel

_CHUNK = 1 << 22  # elements of a [U, V, K] temporary built at once


class TimeTables(NamedTuple):
    """Schedule values per distinct t (index u) and the forward outflow S_v(t), [U, V]."""

    u: torch.Tensor  # [N] index of each position's t
    alpha: torch.Tensor  # [U]
    beta: torch.Tensor
    dalpha: torch.Tensor
    dbeta: torch.Tensor
    local: torch.Tensor  # [U, 1 or V, K] lam_t s_t(r | v) (1: kNN kernels, independent of v)
    dlocal: torch.Tensor  # same, d/dt
    outflow: torch.Tensor  # [U, V] S_v
    live: torch.Tensor  # [U] ranks >= live carry no local mass and no change: they act like generic v
    losing: torch.Tensor  # [U] ranks >= losing never lose mass


def _kernel_cache(kernel: Kernel) -> dict:
    """nu at the table entries (computed once per kernel object)."""
    cache = getattr(kernel, "_ctelbo_cache", None)
    if cache is None:
        nu = kernel.global_dist
        nu_nb = nu[kernel.neighbors]  # [V, K]
        cache = {"nu_nb": nu_nb, "nu_nb_t": nu_nb.T.contiguous(), "nu_max": float(nu.max()),
                 # [K + 1, V]: sum of nu over each row's first r ranks
                 "nu_nb_cum": torch.cat([torch.zeros_like(nu).unsqueeze(0), nu_nb.T.cumsum(0)]).contiguous()}
        # the transposed table sorted by (token, rank): entries of z with rank < R are one slice
        V, K = kernel.neighbors.shape
        if K:
            key = kernel.neighbors.reshape(-1) * K + torch.arange(V * K, device=nu.device) % K
            order = torch.argsort(key, stable=True)
            ptr = torch.zeros(V * K + 1, dtype=torch.long, device=nu.device)
            ptr[1:] = torch.cumsum(torch.bincount(key, minlength=V * K), 0)
            cache.update(inv_src=order // K, inv_rank=order % K, inv_ptr=ptr)
        kernel._ctelbo_cache = cache
    return cache


def time_tables(kernel: Kernel, t: torch.Tensor) -> TimeTables:
    tu, u = torch.unique(t, return_inverse=True)
    (a, b, _), (da, db, _) = kernel.branch_weights_and_derivatives(tu)
    if (db < -1e-12).any():
        raise ValueError("the continuous-time ELBO needs a non-decreasing global weight beta_t")
    V, K, nu = kernel.vocab_size, kernel.num_ranks, kernel.global_dist
    U = tu.numel()
    db = db.clamp_min(0.0)
    # S_v = beta' nu(outside {v} u N(v)) + [alpha' + beta' nu(v)]_+ + sum_r [dlocal_r(v) + beta' nu(N(v)_r)]_+
    outflow = db.unsqueeze(-1) * (1.0 - nu) + (da.unsqueeze(-1) + db.unsqueeze(-1) * nu).clamp_min(0.0)  # [U, V]
    if not K:
        local = dlocal = torch.zeros(U, 1, 0, dtype=torch.float64, device=kernel.device)
        none = torch.zeros(U, dtype=torch.long, device=kernel.device)
        return TimeTables(u, a, b, da, db, local, dlocal, outflow, none, none)
    cache = _kernel_cache(kernel)
    nu_nb = cache["nu_nb"]
    if kernel.cfg.traits.rank_weights_per_token:  # s_t depends on v: [U, V, K], in chunks
        local, dlocal = kernel.local_mass_and_derivative(tu.unsqueeze(-1), torch.arange(V, device=kernel.device))
        step = max(1, _CHUNK // (V * K))
        parts = [((dlocal[lo:lo + step] + db[lo:lo + step, None, None] * nu_nb).clamp_min(0.0)
                  - db[lo:lo + step, None, None] * nu_nb).sum(-1) for lo in range(0, U, step)]
        full = torch.full((U,), K, dtype=torch.long, device=kernel.device)
        return TimeTables(u, a, b, da, db, local.contiguous(), dlocal.contiguous(), outflow + torch.cat(parts),
                           full, full)
    # kNN kernels: s_t does not depend on v. A rank whose mass grows contributes linearly; one that loses
    # more than beta' max(nu) contributes 0 for every v; only the (rare) others need the [V] relu.
    local, dlocal = kernel.local_mass_and_derivative(tu)  # [U, K]
    grows = dlocal >= 0
    dead = dlocal + db.unsqueeze(-1) * cache["nu_max"] <= 0
    losing = ~grows
    n_losing = losing.sum(-1)
    if bool((losing == (torch.arange(K, device=kernel.device) < n_losing.unsqueeze(-1))).all()):
        lost_nu = cache["nu_nb_cum"].index_select(0, n_losing)  # kNN: the losing ranks are a prefix
    else:
        lost_nu = losing.to(torch.float64) @ cache["nu_nb_t"]
    outflow = outflow + (dlocal * grows).sum(-1, keepdim=True) - db.unsqueeze(-1) * lost_nu
    for i, r in torch.nonzero(~grows & ~dead).tolist():
        outflow[i] += (dlocal[i, r] + db[i] * nu_nb[:, r]).clamp_min(0.0)
    return TimeTables(u, a, b, da, db, local.unsqueeze(1).contiguous(), dlocal.unsqueeze(1).contiguous(), outflow,
                       _live_ranks(local, dlocal), _live_ranks(torch.zeros_like(local), dlocal.clamp_max(0.0)))


def _g(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x.flatten()[idx] (index_select: much cheaper than advanced indexing on CPU)."""
    return x.reshape(-1).index_select(0, idx.reshape(-1)).reshape(idx.shape)


def _live_ranks(local: torch.Tensor, dlocal: torch.Tensor) -> torch.Tensor:
    """1 + the last rank with local != 0 or dlocal != 0, per row of [U, K] (0 if none)."""
    K = local.shape[-1]
    alive = (local != 0) | (dlocal != 0)
    last = torch.where(alive, torch.arange(1, K + 1, device=local.device), 0)
    return last.amax(-1)


def local_at(tab: TimeTables, kernel: Kernel, u: torch.Tensor, v: torch.Tensor, r: torch.Tensor):
    """(lam s_t(r | v), d/dt) at entries (u, v, r) (broadcast)."""
    _, Vk, K = tab.local.shape
    idx = (u * Vk + (v if Vk > 1 else 0)) * K + r
    return _g(tab.local, idx), _g(tab.dlocal, idx)


def _inverse_entries(kernel: Kernel, z: torch.Tensor, ranks: torch.Tensor):
    """All (n, v, rank) with neighbors[v, rank] = z[n] and rank < ranks[n] (cf. kernel.inverse_entries)."""
    cache, K = _kernel_cache(kernel), kernel.num_ranks
    ptr = cache["inv_ptr"]
    start, end = _g(ptr, z * K), _g(ptr, z * K + ranks)
    counts = end - start
    n = torch.repeat_interleave(torch.arange(z.numel(), device=z.device), counts)
    offset = _g(start - (torch.cumsum(counts, 0) - counts), n)
    e = offset + torch.arange(n.numel(), device=z.device)
    return n, _g(cache["inv_src"], e), _g(cache["inv_rank"], e)
