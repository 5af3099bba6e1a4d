"""Which CTMC realises a kernel's marginals decides how tight its path bound is (docs/likelihood.md, Sec 6.7).

The conditional-path ELBO (pipeline/core/ct_elbo.py, Sec 6) realises q_t(. | v) by the *flux* chain: mass
flows only out of the states that lose it into those that gain it. Any other chain with the same marginals
gives another valid bound (and another generative model with the same one-time marginals). This module
holds, in dense O(V^2)-per-t form for the exact toys, the one-parameter family

    forward rates  Q^v_t(y -> z) = rho_t nu(z)  +  [-r_v(y)]_+ [r_v(z)]_+ / (S_v q_t(y | v)),
    r_v = d/dt q_t(. | v) - rho_t (nu - q_t(. | v)),   S_v = sum_j [r_v(j)]_+,

a *resampling* part (every position, whatever its state and x0, redraws its token from nu at rate rho_t)
plus the flux chain of what resampling leaves over. rho = 0 is Sec 6's chain. :func:`resample_rate`,
rho_t = beta'_t / (1 - beta_t), cancels the global branch's remainder exactly: for ``mask`` and ``uniform``
r = 0 (their chains are x0-independent: MDLM's, and UDLM's, whose bound is exact at zero context), and for
SemDLM+ only the clean and local branches are left to the flux. On the V = 60 toy (exact posterior):
SemDLM+ 4.961 (rho = 0) -> 4.232 (rho_t), exact NLL 4.043.

Reverse (generative-direction) rates of the chain given v, for y != z:

    Rbar^v(z -> y) = rho nu(z) q_t(y | v) / q_t(z | v) + [r_v(z)]_+ [-r_v(y)]_+ / (S_v q_t(z | v)),

and the model's rates mix them with p_theta(v | x_t) ∝ f_v q_t(z | v) (the kernel-aware reading), so the
resampling part of Rhat is rho nu(z) m(y) / m(z) with m(y) = sum_v f_v q_t(y | v), the model's marginal of
x_t. ``relaxed``: inside the log, Rhat(z -> y) for y outside {x0} u N(x0) is replaced by its lower bound
rho nu(z) (alpha_t f_y + beta_t nu(y)) / m(z) (dropping m's local part and the flux part), which only
raises the integrand, so the bound stays valid; that form needs one V-sized pass per position instead
of an O(V K) one (toy: 4.425).
"""
from __future__ import annotations

import torch

from pipeline.core.kernels import Kernel


def resample_rate(kernel: Kernel, t: float) -> float:
    """rho_t = beta'_t / (1 - beta_t): the resampling rate that leaves the global branch nothing to the flux
    (0 for kernels without a global branch)."""
    (_, beta, _), (_, dbeta, _) = kernel.branch_weights_and_derivatives(t)
    return float(dbeta) / max(1.0 - float(beta), 1e-300) if float(dbeta) > 0 else 0.0


def reverse_rates(kernel: Kernel, t: float, rho: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(Rbar [v, z, y] of the chain given v (zero diagonal and where q_t(z | v) = 0), q_t [v, j]), float64."""
    V = kernel.vocab_size
    allv = torch.arange(V, device=kernel.device)
    p, dp = kernel.marginal_rows(allv, t), kernel.marginal_derivative_rows(allv, t)
    nu = kernel.global_dist.to(p)
    r = dp - rho * (nu.unsqueeze(0) - p)
    s = r.clamp_min(0.0).sum(-1).clamp_min(1e-300)
    pz = p.clamp_min(1e-300).unsqueeze(2)  # [v, z, 1]
    resample = rho * nu.view(1, V, 1) * p.unsqueeze(1) / pz
    flux = r.clamp_min(0.0).unsqueeze(2) * (-r).clamp_min(0.0).unsqueeze(1) / (s.view(V, 1, 1) * pz)
    off = (p > 0).unsqueeze(2) & ~torch.eye(V, dtype=torch.bool, device=p.device).unsqueeze(0)
    return torch.where(off, resample + flux, torch.zeros_like(flux)), p


def model_rates(kernel: Kernel, f: torch.Tensor, z: torch.Tensor, t: float, rho: float, rows=None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(the model's generative rates Rhat(z -> y) = sum_v p(v | x_t) Rbar^v(z -> y), [N, V]; m(z) = sum_v f_v
    q_t(z | v), [N]). ``f`` [N, V]: clean-token scores (rows summing to 1), read kernel-aware: p(v) ∝ f_v q_t(z | v).
    ``rows``: :func:`reverse_rates` at (t, rho) when already computed."""
    rbar, p = reverse_rates(kernel, t, rho) if rows is None else rows
    w = f * p[:, z].T  # [N, v]
    m_z = w.sum(-1)
    w = w / m_z.clamp_min(1e-300).unsqueeze(-1)
    return torch.einsum("nv,nvy->ny", w, rbar[:, z].permute(1, 0, 2)), m_z


def integrand(kernel: Kernel, f: torch.Tensor, x0: torch.Tensor, z: torch.Tensor, t: float, rho: float,
              relaxed: bool = False) -> torch.Tensor:
    """The path-KL integrand of the realisation ``rho`` per position, [N] float64:
    sum_{y != z} [Rhat - Rbar^{x0} + Rbar^{x0} log(Rbar^{x0} / Rhat)](z -> y).

    ``f`` [N, V]: the clean-token scores of a kernel-aware model at each position (see :func:`model_rates`);
    ``x0``, ``z`` [N]: clean and noisy tokens. ``relaxed``: the O(V) form (module docstring).
    """
    rows = reverse_rates(kernel, t, rho)
    rbar, p = rows
    r_hat, m_z = model_rates(kernel, f, z, t, rho, rows)
    r_bar = rbar[x0, z]  # [N, y]
    log_hat = r_hat.clamp_min(1e-300).log()
    if relaxed:
        (alpha, beta, _), _ = kernel.branch_weights_and_derivatives(t)
        nu = kernel.global_dist.to(p)
        lower = rho * nu[z].unsqueeze(-1) * (float(alpha) * f + float(beta) * nu) / m_z.clamp_min(1e-300).unsqueeze(-1)
        n = torch.arange(z.numel(), device=z.device)
        exact = torch.zeros_like(r_bar, dtype=torch.bool)
        exact[n, x0] = True
        if kernel.num_ranks:
            exact[n.unsqueeze(-1), kernel.neighbors[x0]] = True
        log_hat = torch.where(exact, log_hat, lower.clamp_min(1e-300).log())
    kl = torch.where(r_bar > 0, r_bar * (r_bar.clamp_min(1e-300).log() - log_hat), torch.zeros_like(r_bar))
    return (r_hat - r_bar).sum(-1) + kl.sum(-1)


# --------------------------------------------------------------------------- the frequency floor on a real vocabulary
def _branch_rows(kernel: Kernel, v: torch.Tensor, rho: float, consts: tuple):
    """For clean tokens v [E]: (q_t(y | v), r_v(y)) at y = v and at N(v) by rank, [E, 1 + K] each (r_v = 0 on
    every other y when rho = beta' / (1 - beta)), and S_v = sum_y [r_v(y)]_+, [E]."""
    alpha, beta, dalpha, dbeta, loc, dloc, nu = consts
    targets = torch.cat([v.unsqueeze(-1), kernel.neighbors[v]], -1)
    nu_y = nu[targets]
    p = beta * nu_y + torch.cat([torch.full((v.numel(), 1), alpha, dtype=nu.dtype), loc.expand(v.numel(), -1)], -1)
    dp = dbeta * nu_y + torch.cat([torch.full((v.numel(), 1), dalpha, dtype=nu.dtype), dloc.expand(v.numel(), -1)], -1)
    r = dp - rho * (nu_y - p)
    return targets, p, r, r.clamp_min(0.0).sum(-1)


def floor_integrand(kernel: Kernel, u: torch.Tensor, x0: torch.Tensor, z: torch.Tensor, t: float,
                    chunk: int = 64, relaxed: bool = False) -> torch.Tensor:
    """The resampling chain's integrand (rho_t = beta' / (1 - beta)) for the frequency denoiser f = u at every
    position, [N] float64, at one t, on a real vocabulary: :func:`integrand` with f = u broadcast, without its
    [V, V] tables. The model's marginal m(y) = sum_v u_v q_t(y | v) is one O(V K) scatter for all positions
    (it does not depend on the position when f does not); each position then costs O(V) for the resampling
    part of the rates over every y and O(|E_z| K) for the flux part, E_z = {z} u inv(z). kNN kernels only.
    ``relaxed``: :func:`integrand`'s O(V) form.
    """
    if kernel.cfg.traits.rank_weights_per_token:
        raise ValueError("floor_integrand: kNN kernels only (rank masses that depend on t alone)")
    V, K, dev = kernel.vocab_size, kernel.num_ranks, z.device
    (alpha, beta, _), (dalpha, dbeta, _) = kernel.branch_weights_and_derivatives(t)
    alpha, beta, dalpha, dbeta = (float(x) for x in (alpha, beta, dalpha, dbeta))
    rho = resample_rate(kernel, t)
    nu = kernel.global_dist.to(torch.float64)
    loc, dloc = (x.reshape(1, K) for x in kernel.local_mass_and_derivative(t)) if K else (
        torch.zeros(1, 0, dtype=torch.float64, device=dev),) * 2
    consts = (alpha, beta, dalpha, dbeta, loc, dloc, nu)
    u = u.to(torch.float64)
    m = alpha * u + beta * nu * u.sum()
    if K:
        m = m.index_add(0, kernel.neighbors.reshape(-1), (u.unsqueeze(-1) * loc).reshape(-1))
    out = []
    for lo in range(0, z.numel(), chunk):
        zc, xc = z[lo:lo + chunk], x0[lo:lo + chunk]
        n = torch.arange(zc.numel(), device=dev)
        # the data's rates: Rbar^{x0}(z -> y) over every y
        tg, p0, r0, s0 = _branch_rows(kernel, xc, rho, consts)
        p_row = (beta * nu).expand(zc.numel(), V).clone().scatter_add_(1, tg, p0 - beta * nu[tg])
        r_row = torch.zeros(zc.numel(), V, dtype=torch.float64, device=dev).scatter_add_(1, tg, r0)
        p0z, r0z = p_row[n, zc], r_row[n, zc]
        r_bar = rho * nu[zc].unsqueeze(-1) * p_row / p0z.unsqueeze(-1) + (
            r0z.clamp_min(0.0) / (s0.clamp_min(1e-300) * p0z)).unsqueeze(-1) * (-r_row).clamp_min(0.0)
        # the model's: resampling part over every y, flux part from the clean tokens v in E_z
        r_hat = rho * nu[zc].unsqueeze(-1) * m / m[zc].unsqueeze(-1)
        e_n, e_v, e_rank = n, zc, torch.full_like(zc, -1)
        if K:
            inv_n, inv_v, inv_r = kernel.inverse_entries(zc)
            e_n, e_v, e_rank = torch.cat([e_n, inv_n]), torch.cat([e_v, inv_v]), torch.cat([e_rank, inv_r])
        tg_e, p_e, r_e, s_e = _branch_rows(kernel, e_v, rho, consts)
        col = (e_rank + 1).unsqueeze(-1)  # where z sits in v's row: 0 = v itself
        pz_e, rz_e = p_e.gather(1, col).squeeze(-1), r_e.gather(1, col).squeeze(-1)
        w_e = u[e_v] * pz_e / m[zc[e_n]]
        coef = torch.where(pz_e > 0, w_e * rz_e.clamp_min(0.0) / (s_e.clamp_min(1e-300) * pz_e.clamp_min(1e-300)), 0.0)
        r_hat = r_hat.index_put((e_n.unsqueeze(-1).expand_as(tg_e), tg_e), coef.unsqueeze(-1) * (-r_e).clamp_min(0.0),
                                accumulate=True)
        r_bar[n, zc] = 0.0
        r_hat[n, zc] = 0.0
        log_hat = r_hat.clamp_min(1e-300).log()
        if relaxed:  # outside {x0} u N(x0): the lower bound rho nu(z) (alpha u_y + beta nu(y)) / m(z)
            lower = rho * nu[zc].unsqueeze(-1) * (alpha * u + beta * nu * u.sum()) / m[zc].unsqueeze(-1)
            exact = torch.zeros_like(r_bar, dtype=torch.bool).scatter_(1, tg, True)
            log_hat = torch.where(exact, log_hat, lower.clamp_min(1e-300).log())
        kl = torch.where(r_bar > 0, r_bar * (r_bar.clamp_min(1e-300).log() - log_hat), 0.0)
        out.append((r_hat - r_bar).sum(-1) + kl.sum(-1))
    return torch.cat(out)

