"""The path bound of the resampling chain for a network, exact or in its O(V) relaxed form (docs/likelihood.md,
Sec 6.7).

The chain: every position redraws its token from nu at rate rho_t = beta'_t / (1 - beta_t), and the flux
chain of Sec 6.1 realises the rest of d/dt q_t(. | v), r_v = pdot_v - rho_t (nu - q_t(. | v)). With this rho,
r_v vanishes off {v} u N(v): r_v(v) = alpha' + rho alpha, r_v(N(v)_r) = Lambda'_r + rho Lambda_r (kNN kernels:
the same for every v), so S_v = sum_y [r_v(y)]_+ is one number per t. Per position (z = x_t, x0, the
kernel-aware model f' = exp(logits) with the change-aware correction at v = z, Z' = sum_v f'_v q_t(z | v),
F' = sum_v f'_v, m'(y) = sum_v f'_v q_t(y | v)):

    model's rates   Rhat(z -> y) = rho nu(z) m'(y) / Z' + Phi(y),
                    Phi(y) = sum_{v in E_z} (f'_v / Z') [r_v(z)]_+ [-r_v(y)]_+ / S,   E_z = {z} u inv(z);
    data's rates    Rbar(z -> y) = rho nu(z) q_t(y | x0) / q_t(z | x0) + [r_x0(z)]_+ [-r_x0(y)]_+ / (S q_t(z | x0));
    integrand       sum_y (Rhat - Rbar) + sum_{y in T} Rbar log(Rbar / Rhat) + sum_{y in G} Rbar log(Rbar / L),

T = {x0} u N(x0) minus z (exact: m'(y) from {y} u inv(y), the same pairs as Sec 6.4), G every other y, where
Rbar = c nu(y), c = rho nu(z) beta / q_t(z | x0), and Rhat is replaced by its lower bound
L(y) = rho nu(z) (alpha f'_y + beta nu(y) F') / Z' (the relaxation: the bound stays valid), so that
sum_{y in G} = c [nu(G) log(Z' / (F' q_t(z | x0))) - sum_{y in G} nu(y) log1p(alpha f'_y / (beta nu(y) F'))],
one V-sized pass per position. ``exact=True`` (the default) puts the dropped terms back, which gives the
chain's bound itself: the local part of m'(y), sum_{v in inv(y)} f'_v Lambda_rank(t) (a sparse product with the
transposed table, V K entries, per distinct t), and Phi(y) off T (a scatter of E_z's flux rows); on CPU it costs
~1.3-1.6x the relaxed form (tiny SemDLM+, 16 x 64 tokens).
The totals: sum_y Rhat = rho nu(z) (F' / Z' - 1) + sum_{v in E_z} (f'_v / Z') [r_v(z)]_+,
sum_y Rbar = rho nu(z) (1 / q_t(z | x0) - 1) + [r_x0(z)]_+ / q_t(z | x0).

Checked against the dense reference pipeline/research/realisation.py (tests/unit/test_ct_resample.py).
"""
from __future__ import annotations

import functools
import math
import warnings

import torch

from pipeline.core.kernels import Kernel
from pipeline.core.posterior import Reading

from .ct_elbo import _per_position, position_posterior
from .ct_tables import TimeTables, _g, _inverse_entries, _kernel_cache, local_at

_ROWS = 32  # rows per chunk of the V-sized pass (as pipeline/core/softmax_rows.py)
KERNEL_AWARE = Reading(True)


def resampling_applies(kernel: Kernel) -> bool:
    """A kNN kernel with a local and a global branch (SemDLM+): there the resampling chain differs from both
    the flux chain and UDLM's (uniform: it is UDLM's; mask: MDLM's; no global branch: the flux chain)."""
    cached = getattr(kernel, "_resampling_applies", None)
    if cached is None:
        cached = bool(kernel.num_ranks) and not kernel.cfg.traits.rank_weights_per_token \
            and not kernel.cfg.absorbing and bool((kernel.branch_weights_and_derivatives(
                torch.linspace(0.05, 0.95, 7, dtype=torch.float64))[1][1] > 0).any())
        kernel._resampling_applies = cached
    return cached


def resampled_per_token(kernel: Kernel, logits: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, t,
                        mask: torch.Tensor | None = None, chunk: int = 1024, reading: Reading = KERNEL_AWARE,
                        exact: bool = True) -> torch.Tensor:
    """The resampling-chain integrand per position, [B, L] float64 (0 where not counted): ``exact`` (default;
    the chain's bound) or relaxed (module docstring); differentiable in ``logits``. ``reading`` must be
    kernel-aware (the chain's model is p(v) ∝ f_v q_t(z | v))."""
    if not reading.kernel_aware:
        raise ValueError("the resampling chain reads the network kernel-aware (parameterization: kernel)")
    if not resampling_applies(kernel):
        raise ValueError(f"the resampling chain's bound is for kNN kernels with a global branch, not "
                         f"{kernel.cfg.name!r}")
    positions = functools.partial(_positions, exact=exact)
    return _per_position(kernel, logits, x0, xt, t, mask, chunk, None, reading, positions)


def resampling_rate(beta: torch.Tensor, dbeta: torch.Tensor) -> torch.Tensor:
    """rho_t = beta'_t / (1 - beta_t) (0 where beta' = 0): the rate at which every position redraws from nu."""
    return torch.where(dbeta > 0, dbeta / (1.0 - beta).clamp_min(1e-300), torch.zeros_like(dbeta))


def remainder_rows(tab: TimeTables, kernel: Kernel, u: torch.Tensor, rho: torch.Tensor):
    """(q, r) of a clean token's own row (v, then N(v) by rank) at times tab[u]: [M, 1 + K] each, q without its
    global part, r = (alpha' + rho alpha, Lambda' + rho Lambda) the remainder the flux realises (the same row
    for every v of a kNN kernel); and S = sum [r]_+, [M]. The sampler's rates read the same rows."""
    K = kernel.num_ranks
    a, da = _g(tab.alpha, u), _g(tab.dalpha, u)
    loc, dloc = local_at(tab, kernel, u.unsqueeze(-1), torch.zeros_like(u).unsqueeze(-1),
                         torch.arange(K, device=u.device))
    q = torch.cat([a.unsqueeze(-1), loc], -1)
    r = torch.cat([(da + rho * a).unsqueeze(-1), dloc + rho.unsqueeze(-1) * loc], -1)
    return q, r, r.clamp_min(0.0).sum(-1)


def _positions(kernel: Kernel, tab: TimeTables, lg: torch.Tensor, z: torch.Tensor, x: torch.Tensor,
               lse_dense: torch.Tensor, reading: Reading, exact: bool) -> torch.Tensor:
    dev, N, V, K = z.device, z.numel(), kernel.vocab_size, kernel.num_ranks
    u, nu = tab.u, kernel.global_dist
    b, db = _g(tab.beta, u), _g(tab.dbeta, u)
    alpha = _g(tab.alpha, u)
    rho = resampling_rate(b, db)
    nu_z = _g(nu, z)
    res = rho * nu_z  # the resampling rate into z's state, scaled: rho nu(z)
    post = position_posterior(kernel, tab, lg, z, lse_dense, reading)
    alive = torch.isfinite(post.log_z)
    log_z = torch.where(alive, post.log_z, torch.zeros_like(post.log_z))
    # F' = sum_v f'_v: the dense logsumexp plus the correction at v = z (where nu(z) > 0: the only place needed)
    lg_z = _g(lg, torch.arange(N, device=dev) * V + z).to(torch.float64)
    log_f = lse_dense
    if reading.log_ratio:
        log_f = torch.logaddexp(lse_dense, lg_z + math.log(math.expm1(reading.log_ratio)))
    use_res = (res > 0) & alive & torch.isfinite(log_f)
    f_over_z = torch.where(use_res, (log_f - log_z).exp(), torch.zeros_like(log_z))  # F' / Z'
    q_row, r_row, s = remainder_rows(tab, kernel, u, rho)  # [N, 1 + K]; S the same for every clean token
    s_safe = s.clamp_min(1e-300)
    # the data's row: targets x0 and N(x0), q_t(y | x0) there, r_x0 there
    targets = torch.cat([x.unsqueeze(-1), kernel.neighbors.index_select(0, x)], -1)
    q0 = q_row + b.unsqueeze(-1) * _g(nu, targets)
    hit = targets == z.unsqueeze(-1)
    p0z = b * nu_z + (q_row * hit).sum(-1)
    r0z = (r_row * hit).sum(-1)
    p0z_safe = p0z.clamp_min(1e-300)
    # the model's flux part out of z: entries v in E_z, f'_v / Z' = w_v / q_t(z | v), r_v(z) = pdot_v(z) - rho (nu - q)
    ent_rz = post.e_dp - _g(rho, post.e_n) * (_g(nu_z, post.e_n) - post.e_q)
    ent_f = post.w_e / post.e_q  # f'_v / Z'
    model_out = res * (f_over_z - 1.0) * use_res + torch.zeros(N, dtype=torch.float64, device=dev).index_add(
        0, post.e_n, ent_f * ent_rz.clamp_min(0.0))
    data_out = res * (1.0 / p0z_safe - 1.0) + r0z.clamp_min(0.0) / p0z_safe
    val = model_out - data_out
    # targets y in T (not z): Rbar exact, Rhat exact from the pairs (y, v in {y} u inv(y))
    r_bar = (res / p0z_safe).unsqueeze(-1) * q0 + (r0z.clamp_min(0.0) / (s_safe * p0z_safe)).unsqueeze(-1) * (
        -r_row).clamp_min(0.0)
    keep_t = (~hit) & (r_bar > 0)
    m_idx = torch.nonzero(keep_t.reshape(-1)).flatten()
    m_n, y = m_idx // (K + 1), _g(targets, m_idx)
    rb = _g(r_bar, m_idx)
    M = m_idx.numel()
    j, v_inv, r_inv = _inverse_entries(kernel, y, _g(tab.live, _g(u, m_n)))
    p_m = torch.cat([torch.arange(M, device=dev), j])
    p_v = torch.cat([y, v_inv])
    p_rank = torch.cat([torch.full_like(y, -1), r_inv])
    p_n = _g(m_n, p_m)
    pq, pr = (_g(q_row, p_n * (K + 1) + p_rank + 1), _g(r_row, p_n * (K + 1) + p_rank + 1))  # q_v(y) local part, r_v(y)
    log_fp = _g(lg, p_n * V + p_v).to(torch.float64)
    if reading.log_ratio:
        log_fp = log_fp + reading.log_ratio * (p_v == _g(z, p_n)).to(torch.float64)
    fp_over_z = torch.where(_g(alive, p_n), (log_fp - _g(log_z, p_n)).exp(), torch.zeros_like(log_fp))
    m_over_z = torch.zeros(M, dtype=torch.float64, device=dev).index_add(0, p_m, fp_over_z * pq)
    m_over_z = m_over_z + _g(b, m_n) * _g(nu, y) * _g(f_over_z, m_n)  # the global part of m'(y), beta nu(y) F'
    # Phi(y): pairs whose v is an entry of E_z (the model can be in a state that flows out of z towards y)
    e_key = post.e_n * V + post.e_v
    phi = torch.zeros(M, dtype=torch.float64, device=dev)
    if e_key.numel():
        e_sorted, order = torch.sort(e_key)
        key = p_n * V + p_v
        pos = torch.searchsorted(e_sorted, key).clamp_max(e_sorted.numel() - 1)
        is_e = _g(e_sorted, pos) == key
        e_idx = _g(order, pos)
        flow = torch.where(is_e, _g(ent_f * ent_rz.clamp_min(0.0), e_idx), torch.zeros_like(log_fp))
        phi = phi.index_add(0, p_m, flow * (-pr).clamp_min(0.0) / _g(s_safe, p_n))
    r_hat = _g(res, m_n) * m_over_z * _g(use_res, m_n) + phi
    kl_t = rb * (rb.log() - r_hat.clamp_min(1e-300).log())
    val = val.index_add(0, m_n, kl_t)
    # generic y: c [nu(G) log(Z' / (F' q_t(z | x0))) + sum_G nu(y) phi(y)],
    # phi(y) = -log1p(alpha f'_y / (beta nu(y) F'))
    c = torch.where(use_res, res * b / p0z_safe, torch.zeros_like(res))
    gen = torch.nonzero(c > 0).flatten()
    if gen.numel():
        gn = _g(nu, targets.index_select(0, gen))  # [G, 1 + K]
        z_out = ~hit.index_select(0, gen).any(-1)  # z is not one of the targets: remove it from G too
        nu_g = 1.0 - gn.sum(-1) - z_out * _g(nu_z, gen)
        lf = _g(log_f, gen)
        ratio = _g(alpha, gen) / _g(b, gen)  # alpha / beta
        extra = None
        if exact:  # the local part of m'(y) and Phi off T, over beta nu F' (the pass divides by nu)
            extra = _ExactTerms(kernel, tab, lg, z, targets, lf, gen, post, ent_f * ent_rz.clamp_min(0.0),
                                r_row, s_safe * res * f_over_z, _g(b, gen), reading.log_ratio)
        full = _nu_log1p_pass(lg.index_select(0, gen), lf, ratio, nu, extra)
        lg_t = lg.index_select(0, gen).gather(-1, targets.index_select(0, gen)).to(torch.float64)
        sub = (gn * -torch.log1p(ratio.unsqueeze(-1) * (lg_t - lf.unsqueeze(-1)).exp() / gn.clamp_min(1e-300))
               * (gn > 0)).sum(-1)
        sub = sub + z_out * _g(nu_z, gen) * -torch.log1p(ratio * (_g(lg_z, gen) - lf).exp()
                                                          / _g(nu_z, gen).clamp_min(1e-300))
        term = nu_g * (_g(log_z, gen) - lf - _g(p0z_safe, gen).log()) + full - sub
        val = val.index_add(0, gen, _g(c, gen) * term)
    return val


def _nu_log1p_pass(lg: torch.Tensor, log_f: torch.Tensor, ratio: torch.Tensor, nu: torch.Tensor, extra=None
                   ) -> torch.Tensor:
    """-sum_y nu(y) log1p((ratio exp(lg_y - log_f) + extra_y) / nu(y)) over y with nu(y) > 0, per row, [G]
    float64 (chunked); ``extra(lo, hi)``: [hi - lo, V] or None (0)."""
    cols = torch.nonzero(nu > 0).flatten()
    every = cols.numel() == nu.numel()
    nu_c = nu if every else nu.index_select(0, cols)
    out = []
    for lo in range(0, lg.shape[0], _ROWS):
        part = lg[lo:lo + _ROWS] if every else lg[lo:lo + _ROWS].index_select(1, cols)
        e = ratio[lo:lo + _ROWS].unsqueeze(-1) * (part.to(torch.float64) - log_f[lo:lo + _ROWS].unsqueeze(-1)).exp()
        if extra is not None:
            x = extra(lo, lo + part.shape[0])
            e = e + (x if every else x.index_select(1, cols))
        out.append(-(nu_c * torch.log1p(e / nu_c)).sum(-1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64, device=lg.device)


class _ExactTerms:
    """What the relaxation drops from Rhat(z -> y) off T, per gen row and y, over rho nu(z) beta F' / Z':
    (sum_{v in inv(y)} f'_v Lambda_rank + Z' Phi(y) / (rho nu(z))) / (beta F'), 0 at y in T u {z}."""

    def __init__(self, kernel, tab, lg, z, targets, log_f, gen, post, flow, r_row, scale, beta, log_ratio):
        V, K = kernel.vocab_size, kernel.num_ranks
        self.lg, self.log_f, self.gen, self.beta, self.log_ratio = lg, log_f, gen, beta, log_ratio
        self.z_gen, self.targets, self.u_gen = _g(z, gen), targets.index_select(0, gen), _g(tab.u, gen)
        self.local = tab.local[:, 0, :]  # [U, K]: Lambda_rank(t) (kNN: the same for every v)
        cache = _kernel_cache(kernel)
        self.crow, self.col, self.rank = cache["inv_ptr"][::K].contiguous(), cache["inv_src"], cache["inv_rank"]
        self.V = V
        self._last = (None, None)  # (u, its CSR matrix): a sequence's rows span consecutive chunks
        # Phi's entries: (gen row, y, value) for y in {v} u N(v) of each v in E_z with [-r_v(y)]_+ > 0
        row_of = torch.full((z.numel(),), -1, dtype=torch.long, device=z.device)
        row_of[gen] = torch.arange(gen.numel(), device=z.device)
        keep = _g(row_of, post.e_n) >= 0
        e_n, e_v, w = post.e_n[keep], post.e_v[keep], (flow / _g(scale, post.e_n).clamp_min(1e-300))[keep]
        ys = torch.cat([e_v.unsqueeze(-1), kernel.neighbors.index_select(0, e_v)], -1)  # [E, 1 + K]
        gain = (-r_row).clamp_min(0.0).index_select(0, e_n)  # [E, 1 + K]
        val = w.unsqueeze(-1) * gain
        nz = val > 0
        self.phi_row = _g(row_of, e_n).unsqueeze(-1).expand_as(ys)[nz]
        self.phi_y, self.phi_val = ys[nz], val[nz]

    def _matrix(self, uu: int) -> torch.Tensor:
        """The transposed neighbour table as a [V, V] CSR matrix with values Lambda_rank at the u-th t."""
        if self._last[0] != uu:
            with warnings.catch_warnings():  # "CSR support is in beta": the product is checked (tests)
                warnings.simplefilter("ignore", UserWarning)
                w = torch.sparse_csr_tensor(self.crow, self.col, self.local[uu].index_select(0, self.rank),
                                            (self.V, self.V), check_invariants=False)
            self._last = (uu, w)
        return self._last[1]

    def __call__(self, lo: int, hi: int) -> torch.Tensor:
        rows = torch.arange(lo, hi, device=self.lg.device)
        n = self.gen[lo:hi]
        e = (self.lg.index_select(0, n).to(torch.float64) - self.log_f[lo:hi].unsqueeze(-1)).exp()  # f'_v / F'
        if self.log_ratio:  # the correction at v = z
            e = e.index_put((rows - lo, self.z_gen[lo:hi]), _g(e, (rows - lo) * self.V + self.z_gen[lo:hi])
                            * math.exp(self.log_ratio))
        out = torch.zeros_like(e)
        u = self.u_gen[lo:hi]
        for uu in torch.unique(u).tolist():
            sel = torch.nonzero(u == uu).flatten()
            out = out.index_copy(0, sel, (self._matrix(uu) @ e.index_select(0, sel).T).T)
        pick = (self.phi_row >= lo) & (self.phi_row < hi)
        out = out.index_put((self.phi_row[pick] - lo, self.phi_y[pick]), self.phi_val[pick], accumulate=True)
        out = out / self.beta[lo:hi].unsqueeze(-1)
        zero = torch.cat([self.targets[lo:hi], self.z_gen[lo:hi].unsqueeze(-1)], -1)
        return out.scatter(1, zero, 0.0)
