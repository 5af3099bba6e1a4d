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
