"""Continuous-time ELBO of the conditional path, for every kernel in branch form (docs/likelihood.md, Sec 6).

Per position and clean token v, the forward marginal p_v(t) = q_t(. | v) has derivative
pdot_v = d/dt q_t(. | v). The CTMC with reverse-time (generative-direction) rates

    Rbar^v_t(z -> y) = [pdot_v(z)]_+ [-pdot_v(y)]_+ / (q_t(z | v) S_v(t)),   S_v = sum_y [pdot_v(y)]_+,

realises these marginals. The model's reverse rates are the posterior mixture
Rhat(z -> y) = sum_v p_theta(v | x_t) Rbar^v(z -> y), and with the path-measure KL (Campbell et al. 2022)

    -log p(x0) <= KL(q_1(. | x0) || pi) + int_0^1 E_{x_t ~ q_t(.|x0)} sum_i sum_{y != z_i}
                   [Rhat - Rbar^{x0} + Rbar^{x0} log(Rbar^{x0} / Rhat)] dt.

Per position (z = x_t, w = p_theta(. | x_t) restricted to the v with q_t(z | v) > 0, SUBS for mask):

    integrand = sum_v w_v [pdot_v(z)]_+ / q_t(z | v)  -  c  +  sum_{y in T} r_y log(r_y / Rhat(z -> y)),
    c = [pdot_{x0}(z)]_+ / q_t(z | x0),   r_y = c [-pdot_{x0}(y)]_+ / S_{x0},   T = {x0} u N(x0).

Sparsity (beta'_t >= 0, checked by KernelConfig): pdot_v(y) < 0 only for y in {v} u N(v), and for v
with z not in {v} u N(v) the ratio pdot_v(z) / q_t(z | v) = beta' / beta is the same ("generic" v).
So a position needs one logsumexp over V, the entries {z} u inv(z), and for Rhat the v in
{y} u inv(y) for the y in T: O(V + K * in-degree), not O(V K). S_v is tabulated per distinct t
(O(V K) per sequence; pipeline/core/ct_tables.py). Accumulation is float64.
:func:`pipeline.core.ct_dense.ctelbo_integrand_dense` is the O(V^2) reference the tests check the sparse
code against.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from pipeline.core.kernels import Kernel
from pipeline.core.posterior import PLAIN, Reading, excluded_token
from pipeline.core.softmax_rows import logsumexp_rows
from pipeline.core.time_sampling import T_MIN

from .ct_tables import TimeTables, _g, _inverse_entries, local_at, time_tables


def _segment_logsumexp(values: torch.Tensor, seg: torch.Tensor, n: int) -> torch.Tensor:
    """logsumexp of values grouped by seg (-inf for empty segments), [n]."""
    m = torch.full((n,), -math.inf, dtype=values.dtype, device=values.device)
    m = m.scatter_reduce(0, seg, values.detach(), "amax", include_self=True)
    m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, seg, (values - m_safe[seg]).exp())
    return s.log() + m_safe


def ctelbo_per_token(kernel: Kernel, logits: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, t,
                     mask: torch.Tensor | None = None, chunk: int = 1024, lse: torch.Tensor | None = None,
                     reading: Reading = PLAIN) -> torch.Tensor:
    """The continuous-time ELBO integrand per position, [B, L] nats/unit time (0 where not counted).

    Differentiable in ``logits`` (the training loss); ``t`` is a scalar, [B] or [B, L]. ``lse``: the
    logits' logsumexp at every position, [B * L] float64, when the caller has it (else computed here,
    only where the global branch reaches x_t). ``reading``: how the logits become p_theta(v | x_t)
    (pipeline/core/posterior.py). The sparse work runs ``chunk`` positions at a time (the schedule
    tables once per call).
    """
    return _per_position(kernel, logits, x0, xt, t, mask, chunk, lse, reading, _positions_integrand)


def posterior_nll_per_token(kernel: Kernel, logits: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, t,
                            mask: torch.Tensor | None = None, chunk: int = 1024, reading: Reading = PLAIN
                            ) -> torch.Tensor:
    """-log p_theta(x0 | x_t) per position under ``reading``, [B, L] float64, differentiable (Eq 120's
    cross-entropy for a kernel-aware model): the same sparse normaliser as the ELBO, no extra V-sized pass."""
    return _per_position(kernel, logits, x0, xt, t, mask, chunk, None, reading, _positions_nll)


def _per_position(kernel, logits, x0, xt, t, mask, chunk, lse, reading, per_positions) -> torch.Tensor:
    """Runs ``per_positions(kernel, tab, lg, z, x, lse, reading)`` over the counted positions, [B, L] float64."""
    B, L = x0.shape
    V = kernel.vocab_size
    dev = x0.device
    counted = torch.ones_like(x0, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    cidx = torch.nonzero(counted.reshape(-1)).flatten()
    out = torch.zeros(B * L, dtype=torch.float64, device=dev)
    if cidx.numel() == 0:
        return out.reshape(B, L) + 0.0 * logits.sum()
    tt = _g(kernel._broadcast_t(t, x0.shape).contiguous(), cidx)
    z, x = _g(xt, cidx), _g(x0, cidx)
    lg = logits.reshape(-1, V)
    if cidx.numel() < B * L:
        lg = lg.index_select(0, cidx)
    excluded = excluded_token(kernel, reading)
    if excluded is not None:  # SUBS (and models without a support bias): never predict [MASK] as the clean token
        lg = lg.index_fill(-1, torch.tensor([excluded], device=dev), -math.inf)
    tab = time_tables(kernel, tt)
    generic = _g(tab.beta, tab.u) * _g(kernel.global_dist, z) > 0  # q_t(z | v) > 0 for every v: needs all of V
    if lse is not None and excluded is None:  # (an exclusion changed the logits above)
        lse = _g(lse, cidx)
    elif bool(generic.any()):
        rows = torch.nonzero(generic).flatten()
        lse = torch.zeros(z.numel(), dtype=torch.float64, device=dev).index_put(
            (rows,), logsumexp_rows(lg if rows.numel() == z.numel() else lg.index_select(0, rows)))
    else:
        lse = torch.zeros(z.numel(), dtype=torch.float64, device=dev)
    if z.numel() <= chunk:
        val = per_positions(kernel, tab, lg, z, x, lse, reading)
    else:  # bounded working set (memory of the pair lists)
        val = torch.cat([per_positions(kernel, tab._replace(u=tab.u[lo:lo + chunk]), lg[lo:lo + chunk],
                                       z[lo:lo + chunk], x[lo:lo + chunk], lse[lo:lo + chunk], reading)
                         for lo in range(0, z.numel(), chunk)])
    out = out.index_put((cidx,), val)
    return out.reshape(B, L)


class PositionPosterior(NamedTuple):
    """p_theta(v | x_t) of N positions in sparse form: entries E_z = {z} u inv(z), and one generic weight.

    p(v) = exp(lg_v + h_v - log_z), h_v = h_e at an entry, h_g elsewhere (p(v) = exp(lg_v - lse_gen) there).
    """

    e_n: torch.Tensor  # [M] position of each entry
    e_v: torch.Tensor  # [M] its clean token v
    e_q: torch.Tensor  # [M] q_t(z | v)
    e_dp: torch.Tensor  # [M] d/dt q_t(z | v)
    w_e: torch.Tensor  # [M] p_theta(v | x_t) at the entry
    h_e: torch.Tensor  # [M] the log factor the reading multiplies the entry's exp(logit) by
    log_z: torch.Tensor  # [N] log normaliser
    lse_gen: torch.Tensor  # [N] log_z - h_g where generic (0 elsewhere)
    generic: torch.Tensor  # [N] the global branch reaches z: every v is possible
    g_q: torch.Tensor  # [N] q_t(z | v) of a generic v
    g_dp: torch.Tensor  # [N] its time derivative


def position_posterior(kernel: Kernel, tab: TimeTables, lg: torch.Tensor, z: torch.Tensor, lse_dense: torch.Tensor,
                       reading: Reading) -> PositionPosterior:
    """The posterior of N positions from their logits ``lg`` [N, V] and ``lse_dense`` (logsumexp of ``lg``
    where the global branch reaches z), O(entries) beyond that one V-sized pass.

    Reading ``kernel``: h = log q_t(z | v); ``direct``: h = 0 on every v with q_t(z | v) > 0; both plus
    ``log_ratio`` at v = z. Generic v all share h_g, so with S = sum_v exp(lg_v) = exp(lse_dense)
    Z = exp(h_g) S + sum_{v in E} exp(lg_v) (exp(h_v) - exp(h_g)), each added term >= 0 (q_t(z | v) >= its
    generic value at an entry, log_ratio >= 0). A position with Z = 0 (no mass on any possible v) gets 0 weights.
    """
    V, dev, N = kernel.vocab_size, z.device, z.numel()
    u, nu = tab.u, kernel.global_dist
    a, b, da, db = _g(tab.alpha, u), _g(tab.beta, u), _g(tab.dalpha, u), _g(tab.dbeta, u)
    nu_z = _g(nu, z)
    g_q, g_dp = b * nu_z, db * nu_z  # q_t(z | v), pdot_v(z) for a generic v
    generic = g_q > 0
    # entries E_z: v = z (self) and v in inv(z) (z = N(v)[r]), with q_t(z | v) and pdot_v(z)
    e_n, e_v, e_q, e_dp = torch.arange(N, device=dev), z, a + g_q, da + g_dp
    if kernel.num_ranks:
        n_inv, v_inv, r_inv = _inverse_entries(kernel, z, _g(tab.live, u))
        l_inv, dl_inv = local_at(tab, kernel, _g(u, n_inv), v_inv, r_inv)
        e_n, e_v = torch.cat([e_n, n_inv]), torch.cat([e_v, v_inv])
        e_q = torch.cat([e_q, l_inv + _g(g_q, n_inv)])
        e_dp = torch.cat([e_dp, dl_inv + _g(g_dp, n_inv)])
    keep = e_q > 0
    excluded = excluded_token(kernel, reading)
    if excluded is not None:
        keep &= e_v != excluded
    # entries the model gives f = 0 (its support bias: -inf logits) carry no weight: dropped, so that no
    # segment of the normaliser holds only -inf (whose log(0) would turn a zero gradient into NaN)
    lg_e = _g(lg, e_n * V + e_v)
    keep &= torch.isfinite(lg_e.detach())
    keep = torch.nonzero(keep).flatten()
    e_n, e_v, e_q, e_dp = _g(e_n, keep), _g(e_v, keep), _g(e_q, keep), _g(e_dp, keep)
    lg_e = _g(lg_e, keep).to(torch.float64)
    zero = torch.zeros_like(g_q)
    if reading.is_plain:  # the normaliser of the restricted softmax: all of V where generic, else E_z only
        h_e, h_g = torch.zeros_like(e_q), zero
        log_z = torch.where(generic, lse_dense, _segment_logsumexp(lg_e, e_n, N))
    else:
        h_e = e_q.log() if reading.kernel_aware else torch.zeros_like(e_q)
        if reading.log_ratio:
            h_e = h_e + (e_v == _g(z, e_n)).to(torch.float64) * reading.log_ratio
        h_g = torch.where(generic, g_q.clamp_min(1e-300).log() if reading.kernel_aware else zero, -math.inf)
        extra = h_e + torch.log(-torch.expm1(_g(h_g, e_n) - h_e))  # log(exp(h_e) - exp(h_g)), -inf when equal
        grows = torch.nonzero(torch.isfinite(extra)).flatten()
        part_e = _segment_logsumexp(_g(lg_e, grows) + _g(extra, grows), _g(e_n, grows), N)
        part_g = torch.where(generic, h_g + lse_dense, -math.inf)
        none = torch.isinf(part_e) & torch.isinf(part_g)  # no mass anywhere: -inf, and no NaN gradient
        log_z = torch.where(none, -math.inf, torch.logaddexp(torch.where(none, 0.0, part_g),
                                                              torch.where(none, 0.0, part_e)))
    alive = torch.isfinite(log_z)
    log_z_safe = torch.where(alive, log_z, zero)
    w_e = torch.where(_g(alive, e_n), (lg_e + h_e - _g(log_z_safe, e_n)).exp(), 0.0)
    lse_gen = torch.where(generic & alive, log_z_safe - torch.where(generic, h_g, zero), zero)
    return PositionPosterior(e_n, e_v, e_q, e_dp, w_e, h_e, log_z, lse_gen, generic, g_q, g_dp)


def _positions_integrand(kernel: Kernel, tab: TimeTables, lg: torch.Tensor, z: torch.Tensor, x: torch.Tensor,
                         lse_dense: torch.Tensor, reading: Reading = PLAIN) -> torch.Tensor:
    """The integrand of N positions (flat), [N] float64; ``lse_dense``: logsumexp of ``lg`` where the global
    branch reaches z (anything elsewhere)."""
    dev, N = z.device, z.numel()
    post = position_posterior(kernel, tab, lg, z, lse_dense, reading)
    g_ratio = torch.where(post.generic, post.g_dp.clamp_min(0.0) / post.g_q.clamp_min(1e-300),
                          torch.zeros_like(post.g_q))
    ratio_e = post.e_dp.clamp_min(0.0) / post.e_q

    # term 1: sum_v w_v [pdot_v(z)]_+ / q_t(z | v)
    w_sum = torch.zeros(N, dtype=torch.float64, device=dev).index_add(0, post.e_n, post.w_e)
    term1 = g_ratio * (1.0 - w_sum).clamp_min(0.0) + torch.zeros_like(w_sum).index_add(0, post.e_n,
                                                                                         post.w_e * ratio_e)

    # the data's own reverse rates Rbar^{x0}(z -> y): total c = [pdot_{x0}(z)]_+ / q_t(z | x0), targets T
    own = conditional_reverse_rates(kernel, tab, tab.u, z, x)
    val = term1 - own.total

    act = torch.nonzero(own.total > 0).flatten()
    if act.numel():
        val = val + _jump_kl(kernel, tab, lg, post.lse_gen, post.generic, g_ratio, post.e_n, post.e_v, post.w_e,
                             ratio_e, act, own, N)
    return val


def _positions_nll(kernel: Kernel, tab: TimeTables, lg: torch.Tensor, z: torch.Tensor, x: torch.Tensor,
                   lse_dense: torch.Tensor, reading: Reading = PLAIN) -> torch.Tensor:
    """-log p_theta(x0 | x_t) of N positions, [N] float64: x0 is an entry of E_z (log Z - l_x0 - h_e, the
    reading's factor already at hand) or a generic v (lse_gen - l_x0). An x0 the model gives f = 0 was
    dropped from the entries and lands on the generic form: +inf."""
    post = position_posterior(kernel, tab, lg, z, lse_dense, reading)
    lg_x = _g(lg, torch.arange(z.numel(), device=z.device) * kernel.vocab_size + x).to(torch.float64)
    nll = post.lse_gen - lg_x
    hit = torch.nonzero(post.e_v == _g(x, post.e_n)).flatten()  # the entry of x0, when it is one
    n_hit = _g(post.e_n, hit)
    entry_nll = _g(post.log_z, n_hit) - _g(lg_x, n_hit) - _g(post.h_e, hit)
    return nll.index_put((n_hit,), entry_nll)


class ConditionalRates(NamedTuple):
    """The reverse rates of the conditional path given the clean token v, out of z, per position."""

    q: torch.Tensor  # [N] q_t(z | v)
    qdot: torch.Tensor  # [N] pdot_v(z) = d/dt q_t(z | v)
    total: torch.Tensor  # [N] sum_y Rbar^v(z -> y) = [pdot_v(z)]_+ / q_t(z | v) (0 where q = 0)
    targets: torch.Tensor  # [N, 1 + K] y: v, then N(v) by rank
    rates: torch.Tensor  # [N, 1 + K] Rbar^v(z -> y) = total [-pdot_v(y)]_+ / S_v (0 where y gains mass)
    target_qdot: torch.Tensor  # [N, 1 + K] pdot_v(y) at the targets (signed; the corrector's forward rates)
    target_q: torch.Tensor  # [N, 1 + K] q_t(y | v) at the targets


def conditional_reverse_rates(kernel: Kernel, tab: TimeTables, u: torch.Tensor, z: torch.Tensor, v: torch.Tensor
                              ) -> ConditionalRates:
    """Rbar^v_t(z -> y) = [pdot_v(z)]_+ [-pdot_v(y)]_+ / (q_t(z | v) S_v) for N (z, v) pairs at times tab[u].

    The one implementation of the conditional path's reverse rates: the ELBO evaluates it at v = x0
    (the data's rates), the ``ctmc`` sampler at v drawn from p_theta (pipeline/sampling/ctmc.py).
    Only y in {v} u N(v) can lose mass (beta'_t >= 0), so the targets are that row.
    """
    dev, K, nu = z.device, kernel.num_ranks, kernel.global_dist
    a, b, da, db = _g(tab.alpha, u), _g(tab.beta, u), _g(tab.dalpha, u), _g(tab.dbeta, u)
    is_self = z == v
    q = b * _g(nu, z) + torch.where(is_self, a, torch.zeros_like(a))
    dq = db * _g(nu, z) + torch.where(is_self, da, torch.zeros_like(da))
    neg = (-(da + db * _g(nu, v))).unsqueeze(-1)  # [-pdot_v(v)] before the relu
    q_row = (a + b * _g(nu, v)).unsqueeze(-1)
    targets = v.unsqueeze(-1)
    if K:
        row = kernel.neighbors.index_select(0, v)  # [N, K]
        l_row, dl_row = local_at(tab, kernel, u.unsqueeze(-1), v.unsqueeze(-1), torch.arange(K, device=dev))
        hit = row == z.unsqueeze(-1)
        q = q + (l_row * hit).sum(-1)
        dq = dq + (dl_row * hit).sum(-1)
        neg = torch.cat([neg, -(dl_row + db.unsqueeze(-1) * _g(nu, row))], -1)
        q_row = torch.cat([q_row, l_row + b.unsqueeze(-1) * _g(nu, row)], -1)
        targets = torch.cat([targets, row], -1)
    ok = q > 0
    total = torch.where(ok, dq.clamp_min(0.0) / torch.where(ok, q, torch.ones_like(q)), torch.zeros_like(q))
    outflow = _g(tab.outflow, u * kernel.vocab_size + v)
    safe = torch.where(outflow > 0, outflow, torch.ones_like(outflow))
    rates = total.unsqueeze(-1) * neg.clamp_min(0.0) / safe.unsqueeze(-1)
    return ConditionalRates(q, dq, total, targets, rates, -neg, q_row)


def _jump_kl(kernel, tab, lg, lse, generic, g_ratio, e_n, e_v, w_e, ratio_e, act, own: ConditionalRates, N):
    """sum_{y in T} r_y log(r_y / Rhat(z -> y)) for the positions ``act`` (own.total > 0), [N]."""
    dev, V, K, nu = lg.device, kernel.vocab_size, kernel.num_ranks, kernel.global_dist
    u, db, da = tab.u, tab.dbeta, tab.dalpha
    # targets y in {x0} u N(x0) with Rbar^{x0}(z -> y) > 0
    r_all = own.rates.index_select(0, act)  # [A, 1 + K]
    sel = torch.nonzero(r_all.reshape(-1) > 0).flatten()
    y = _g(own.targets.index_select(0, act), sel)
    r = _g(r_all, sel)
    m_n = _g(act.repeat_interleave(K + 1), sel)
    u_m = _g(u, m_n)
    M = y.numel()
    # pairs (target m, clean v) with y in {v} u N(v) and [-pdot_v(y)]_+ > 0: v = y, and v in inv(y)
    db_m = _g(db, u_m)
    p_m, p_v, p_neg = torch.arange(M, device=dev), y, -(_g(da, u_m) + db_m * _g(nu, y))
    if K:
        j, v_inv, r_inv = _inverse_entries(kernel, y, _g(tab.losing, u_m))
        _, dl = local_at(tab, kernel, _g(u_m, j), v_inv, r_inv)
        neg_inv = -(dl + _g(db_m * _g(nu, y), j))
        ok = torch.nonzero(neg_inv > 0).flatten()
        p_m = torch.cat([p_m, _g(j, ok)])
        p_v = torch.cat([p_v, _g(v_inv, ok)])
        p_neg = torch.cat([p_neg, _g(neg_inv, ok)])
    ok = torch.nonzero(p_neg > 0).flatten()
    p_m, p_v, p_neg = _g(p_m, ok), _g(p_v, ok), _g(p_neg, ok)
    p_n = _g(m_n, p_m)
    # w_v a_v(z) S_v: the entry's own ratio when v is in E_z, else the generic one
    q_key = p_n * V + p_v
    w_gen = (_g(lg, q_key).to(torch.float64) - _g(lse, p_n)).exp()
    wa = w_gen * _g(torch.where(generic, g_ratio, torch.zeros_like(g_ratio)), p_n)
    if e_n.numel():
        e_sorted, order = torch.sort(e_n * V + e_v)
        pos = torch.searchsorted(e_sorted, q_key).clamp_max(e_sorted.numel() - 1)
        e_idx = _g(order, pos)
        wa = torch.where(_g(e_sorted, pos) == q_key, _g(w_e * ratio_e, e_idx), wa)
    rate = wa * p_neg / _g(tab.outflow, _g(u, p_n) * V + p_v)
    r_hat = torch.zeros(M, dtype=torch.float64, device=dev).index_add(0, p_m, rate)
    kl = r * (r.log() - r_hat.log())
    return torch.zeros(N, dtype=torch.float64, device=dev).index_add(0, m_n, kl)


def ctelbo_integrand(kernel: Kernel, logits: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, t,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """The continuous-time ELBO integrand per sequence, [B] nats (sum of :func:`ctelbo_per_token`)."""
    return ctelbo_per_token(kernel, logits, x0, xt, t, mask).sum(-1)


def antithetic_times(n: int, generator: torch.Generator | None = None, t_min: float = T_MIN) -> torch.Tensor:
    """n low-discrepancy times t_i = (u + i / n) mod 1 clamped to [t_min, 1], float64 [n]."""
    u0 = torch.rand((), generator=generator, dtype=torch.float64)
    return torch.remainder(u0 + torch.arange(n, dtype=torch.float64) / n, 1.0).clamp(t_min, 1.0)
