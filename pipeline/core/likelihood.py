"""Likelihood bounds of the diffusion models (derivation: docs/likelihood.md).

* :func:`mdlm_integrand` - MDLM's continuous-time NELBO for the ``mask`` kernel.
* :func:`udlm_integrand` - the closed-form continuous-time ELBO of uniform diffusion (UDLM).
* :func:`discrete_nelbo` - a T-step variational upper bound on -log p(x0) valid for *every* kernel
  of pipeline.core.kernels, an ELBO of exactly the generative process of :func:`reverse_step`; an
  option (``bound="tstep"``): looser than the continuous-time bound for the semantic kernels (V = 60 toy:
  6.6 vs 5.0 nats), equal to it for ``mask`` and within 0.001 nats for ``uniform`` (docs/likelihood.md 6.6).
* ``ctelbo_integrand`` (pipeline.core.ct_elbo) - the continuous-time ELBO
  of the conditional path, every kernel; MDLM's NELBO for ``mask``, tighter than the T-step bound
  for the semantic kernels. Every bound reads the model's output through a ``Reading``
  (pipeline/core/posterior.py: the kernel-aware parameterisation, the change-aware correction).
* :func:`bound_estimates` - the one dispatcher: every bound that applies to a kernel, on one draw of
  x_t; :func:`tightest` picks the smallest total, which the reports and the validation use.

The denoiser is any callable ``model(xt: Long[B, L], t: Float[B]) -> logits Float[B, L, V]``.
All bounds are returned in nats per sequence; :func:`bits_per_token` / :func:`perplexity` convert.
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch

# The continuous-time ELBO of the conditional path, every kernel (docs/likelihood.md Sec 6).
from pipeline.core.ct_elbo import ctelbo_per_token
from pipeline.core.ct_resample import resampled_per_token, resampling_applies
from pipeline.core.kernels import Kernel, alpha_and_derivative
from pipeline.core.posterior import PLAIN, Reading, posterior_probs
from pipeline.core.softmax_rows import logsumexp_rows, sum_log_affine_probs


# --------------------------------------------------------------------------- reporting helpers
def bits_per_token(nats: torch.Tensor | float, num_tokens: torch.Tensor | int) -> float:
    """Total nats over total tokens, in bits."""
    return float(torch.as_tensor(nats, dtype=torch.float64).sum()) / float(num_tokens) / math.log(2.0)


def perplexity(nats: torch.Tensor | float, num_tokens: torch.Tensor | int) -> float:
    """exp(total nats / total tokens)."""
    return math.exp(float(torch.as_tensor(nats, dtype=torch.float64).sum()) / float(num_tokens))


def _positions(x0: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return torch.ones_like(x0, dtype=torch.bool) if mask is None else mask.to(torch.bool)


# --------------------------------------------------------------------------- continuous-time bounds
def mdlm_integrand(kernel: Kernel, logits: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """MDLM's continuous-time NELBO integrand per sequence, [B] nats (Sahoo et al. 2024, Eq 10):

        -alpha'_t / (1 - alpha_t) sum_{l: x_t^l = [MASK]} -log p_theta(x0^l | x_t),

    with the SUBS parameterisation (p_theta([MASK]) = 0; unmasked positions are carried over).
    """
    counted = (xt == kernel.mask_id) & _positions(x0, mask)
    alpha, dalpha = alpha_and_derivative(kernel.cfg, torch.as_tensor(t, device=x0.device).expand(x0.shape[0]))
    weight = (-dalpha / (1.0 - alpha)).unsqueeze(-1).expand(x0.shape)[counted]
    rows = logits[counted]  # only the masked positions carry a term
    rows[:, kernel.mask_id] = -math.inf
    # logsumexp in the logits' dtype (float32 loses nothing that matters), the rest in float64
    nll = logsumexp_rows(rows) - rows.gather(-1, x0[counted].unsqueeze(-1)).squeeze(-1).double()
    per_position = torch.zeros(x0.shape, dtype=torch.float64, device=x0.device)
    return per_position.masked_scatter(counted, weight * nll).sum(-1)


def udlm_integrand(logits: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, alpha: torch.Tensor,
                   dalpha: torch.Tensor, lse: torch.Tensor | None = None, return_lse: bool = False,
                   self_shift: torch.Tensor | None = None):
    """UDLM's continuous-time ELBO integrand per position (Schiff et al. 2025, uniform kernel Eq 6):

        alpha'_t / (V alpha_t) [ V / xbar_z - V / xbar^theta_z
                                 - sum_j xbar_j / xbar_z log(xbar^theta_z xbar_j / (xbar^theta_j xbar_z)) ],

    with xbar = V alpha_t onehot(x0) + 1 - alpha_t, xbar^theta = V alpha_t p_theta + 1 - alpha_t, z = x_t.

    ``logits`` [*x0.shape, V] (log-probabilities work too: p_theta = softmax(logits)); ``alpha``,
    ``dalpha`` per sequence (leading dim); ``lse``: the logits' logsumexp per position, [N] float64,
    when the caller already has it. Returns [*x0.shape] float64 (and ``lse`` if ``return_lse``: the
    pass computes it, and the conditional-path ELBO on the same logits needs it too).

    xbar takes two values, so with sum_j xbar_j = V the sum over j is closed form but for one V-sized
    term: sum_j xbar_j log(xbar^theta_z xbar_j / (xbar^theta_j xbar_z))
    = V log(xbar^theta_z / xbar_z) + sum_j xbar_j log xbar_j - (1 - alpha) sum_j log xbar^theta_j
    - V alpha log xbar^theta_{x0}; no [B, L, V] one-hot or xbar is built, and the one V-sized sum
    is a chunked pass in the logits' dtype (:func:`sum_log_affine_probs`).

    ``self_shift`` [N] (float64): p_theta is the softmax of the logits plus ``self_shift`` at v = x_t, without
    building those logits (how a converted posterior and the change-aware correction reach UDLM,
    :func:`continuous_bound_estimates`): with lse' the shifted normaliser and kappa = exp(lse - lse'),
    p'_j = kappa p_j off x_t, so the V-sized sum is the unshifted pass at scale kappa with x_t's term replaced.
    """
    V, shape = logits.shape[-1], x0.shape
    per_position = (-1,) + (1,) * (x0.dim() - 1)
    a = alpha.to(torch.float64).reshape(per_position).expand(shape).reshape(-1)
    da = dalpha.to(torch.float64).reshape(per_position).expand(shape).reshape(-1)
    lg, z, x = logits.reshape(-1, V), xt.reshape(-1), x0.reshape(-1)
    va = V * a  # xbar is va + 1 - a at x0 and 1 - a elsewhere
    lg_z = lg.gather(-1, z.unsqueeze(-1)).squeeze(-1).to(torch.float64)
    lg_x = lg.gather(-1, x.unsqueeze(-1)).squeeze(-1).to(torch.float64)
    if self_shift is None:
        sum_log_xbt, lse = sum_log_affine_probs(lg, va, 1.0 - a, lse)
        lse_read = lse
    else:
        lse = logsumexp_rows(lg) if lse is None else lse
        shift = self_shift.to(torch.float64).reshape(-1)
        p_z = (lg_z - lse).exp()
        lse_read = lse + torch.log1p(p_z * torch.expm1(shift))  # (a negative shift: 1 - p_z to ~1e-7, float32 lse)
        kappa = (lse - lse_read).exp()
        sum_all, _ = sum_log_affine_probs(lg, va * kappa, 1.0 - a, lse)
        p_z_read = (lg_z + shift - lse_read).exp()
        sum_log_xbt = sum_all - (va * kappa * p_z + 1.0 - a).log() + (va * p_z_read + 1.0 - a).log()
        lg_z = lg_z + shift
        lg_x = lg_x + torch.where(x == z, shift, 0.0)
    xbt_z = va * (lg_z - lse_read).exp() + (1.0 - a)
    xbt_x0 = va * (lg_x - lse_read).exp() + (1.0 - a)
    xb_z = torch.where(z == x, va + 1.0 - a, 1.0 - a)
    sum_xb_log_xb = torch.special.xlogy(va + 1.0 - a, va + 1.0 - a) + (V - 1) * torch.special.xlogy(1.0 - a, 1.0 - a)
    term1 = V / xb_z - V / xbt_z
    term2 = (V * (xbt_z.log() - xb_z.log()) + sum_xb_log_xb - (1.0 - a) * sum_log_xbt - va * xbt_x0.log()) / xb_z
    val = (da / (V * a) * (term1 - term2)).reshape(shape)
    return (val, lse) if return_lse else val


# --------------------------------------------------------------------------- the generic T-step bound
def _pair_branch_probs(kernel: Kernel, s: float, t: float) -> dict[str, float]:
    """Joint law of the branches (C clean, L local, G global) at s < t under the monotone coupling.

    One uniform U per position: C if U < alpha, G if U >= 1 - beta, else L. Because alpha_t is
    non-increasing and beta_t non-decreasing, a position only moves C -> L -> G as t grows.
    """
    a_s, b_s, _ = (float(x) for x in kernel.branch_weights(s))
    a_t, b_t, _ = (float(x) for x in kernel.branch_weights(t))
    pos = lambda x: max(x, 0.0)  # noqa: E731 - rounding guard
    return {"CC": a_t, "CL": pos(min(a_s, 1.0 - b_t) - a_t), "CG": pos(a_s - (1.0 - b_t)),
            "LL": pos(1.0 - b_t - a_s), "LG": pos((1.0 - b_s) - max(a_s, 1.0 - b_t)), "GG": b_s}


def reverse_step_probs(kernel: Kernel, z: torch.Tensor, weights: torch.Tensor, s: float, t: float,
                       lik: torch.Tensor | None = None) -> torch.Tensor:
    """sum_v weights[n, v] q(x_s = . | x_t = z_n, x0 = v), [N, V] (float64).

    q(x_s | x_t, x0) = J(x_s, x_t | x0) / q_t(x_t | x0) where J is the pairwise joint of the branch
    coupling (docs/likelihood.md): branches move C -> L -> G monotonically, a global draw is kept,
    the local rank follows the maximal coupling of s_s and s_t, and entering a branch draws afresh.
    ``weights`` must vanish where q_t(z | v) = 0 (rows whose weights all vanish stay at z).
    Cost O(N V K); no loop over tokens.
    """
    P = _pair_branch_probs(kernel, s, t)
    z = z.reshape(-1)
    N, V = z.numel(), kernel.vocab_size
    lik = kernel.likelihood_of(z, t) if lik is None else lik
    w = weights.to(torch.float64)
    omega = torch.where(lik > 0, w / lik.clamp_min(1e-300), torch.zeros_like(w))
    nu_z = kernel.global_dist[z]
    rows = torch.arange(N, device=z.device)
    diag = P["CC"] * omega[rows, z] + P["GG"] * nu_z * omega.sum(-1)
    out = omega * (P["CG"] * nu_z).unsqueeze(-1)
    K = kernel.num_ranks
    if K and (P["CL"] or P["LL"] or P["LG"]):
        s_s = kernel.rank_probs(s).expand(V, K)  # [V, K]
        s_t = kernel.rank_probs(t).expand(V, K)
        drop = (s_s - s_t).clamp_min(0.0)  # ranks that lose mass from s to t
        tv = drop.sum(-1)  # [V]
        n, v, a = kernel.inverse_entries(z)  # z_n = N(v)[a]
        st_z, ss_z = s_t[v, a], s_s[v, a]
        gain = torch.where(tv[v] > 0, (st_z - ss_z).clamp_min(0.0) / tv[v].clamp_min(1e-300), torch.zeros_like(st_z))
        om = omega[n, v]
        out.index_put_((n, v), om * P["CL"] * st_z, accumulate=True)
        diag = diag.index_add(0, n, om * P["LL"] * torch.minimum(ss_z, st_z))
        c1 = torch.zeros_like(omega).index_put_((n, v), om * P["LL"] * gain)  # [N, V]
        c2 = omega * (P["LG"] * nu_z).unsqueeze(-1)
        for rank in torch.nonzero(s_s.amax(0) > 0).flatten().tolist():  # loop over ranks, not tokens
            src = c1 * drop[:, rank] + c2 * s_s[:, rank]
            out.scatter_add_(1, kernel.neighbors[:, rank].expand(N, V), src)
    out[rows, z] += diag
    # x_t that no weighted clean token can produce is a probability-0 state: define the step to stay put.
    impossible = omega.sum(-1) == 0
    out[rows[impossible], z[impossible]] = 1.0
    return out


def clean_token_probs(kernel: Kernel, logits: torch.Tensor, xt: torch.Tensor, t: float,
                      lik: torch.Tensor | None = None, reading: Reading = PLAIN) -> torch.Tensor:
    """The model's p_theta(x0 | x_t) under ``reading`` (pipeline/core/posterior.py), [..., V] float64.

    Zero on the clean tokens v with q_t(x_t | v) = 0, which makes the generative process well defined
    (MDLM's carry-over for the mask kernel, which also never predicts [MASK] as clean: SUBS). All mass on
    impossible tokens (a degenerate model): q_t(x_t | v) as weights; an x_t no clean token can produce
    (probability 0 under q_t) keeps all-zero weights (see reverse_step_probs).
    """
    return posterior_probs(reading, kernel, logits, xt, t, lik)


def reverse_step(kernel: Kernel, logits: torch.Tensor, xt: torch.Tensor, s: float, t: float,
                 reading: Reading = PLAIN) -> torch.Tensor:
    """The generative step p(x_s | x_t) = sum_v q(x_s | x_t, v) p_theta(v | x_t), per position [B, L, V]."""
    lik = kernel.likelihood_of(xt.reshape(-1), t)
    probs = clean_token_probs(kernel, logits, xt, t, lik, reading).reshape(-1, kernel.vocab_size)
    return reverse_step_probs(kernel, xt.reshape(-1), probs, s, t, lik).reshape(*xt.shape, kernel.vocab_size)


def step_kl(kernel: Kernel, model, x0: torch.Tensor, xt: torch.Tensor, s: float, t: float,
            mask: torch.Tensor | None = None, reading: Reading = PLAIN) -> torch.Tensor:
    """sum over counted positions of KL(q(x_s | x_t, x0) || p(x_s | x_t)), [B] nats (s = 0: -log p)."""
    B, L = x0.shape
    t_vec = torch.full((B,), float(t), dtype=torch.float32, device=x0.device)
    logits = model(xt, t_vec)
    z = xt.reshape(-1)
    lik = kernel.likelihood_of(z, t)
    probs = clean_token_probs(kernel, logits, xt, t, lik, reading).reshape(-1, kernel.vocab_size)
    p = reverse_step_probs(kernel, z, probs, s, t, lik)
    onehot = torch.nn.functional.one_hot(x0.reshape(-1), kernel.vocab_size).to(torch.float64)
    q = reverse_step_probs(kernel, z, onehot, s, t, lik)
    kl = torch.where(q > 0, q * (q.clamp_min(1e-300).log() - p.clamp_min(1e-300).log()), torch.zeros_like(q))
    return (kl.sum(-1).reshape(B, L) * _positions(x0, mask)).sum(-1)


def prior_kl(kernel: Kernel, x0: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """sum over counted positions of KL(q_1(. | x0) || pi), [B] nats, pi = kernel.prior_probs()."""
    return (_prior_kl_per_token(kernel, x0)[x0] * _positions(x0, mask)).sum(-1)


def _prior_kl_per_token(kernel: Kernel, x0: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """KL(q_1(. | v) || pi) per vocabulary id v, [V] float64, filled in for the ids of ``x0`` on first use.

    It depends on v alone, so it is cached on the kernel (a dense q_1 row costs O(V) per position).
    """
    cache = getattr(kernel, "_prior_kl_cache", None)
    if cache is None:
        cache = torch.full((kernel.vocab_size,), math.nan, dtype=torch.float64, device=x0.device)
        kernel._prior_kl_cache = cache
    ids = torch.unique(x0)
    ids = ids[torch.isnan(cache[ids])]
    if ids.numel():
        log_pi = kernel.prior_probs().clamp_min(1e-300).log()
        for part in ids.split(chunk):
            q1 = kernel.marginal_rows(part, 1.0)
            cache[part] = torch.where(q1 > 0, q1 * (q1.clamp_min(1e-300).log() - log_pi), 0.0).sum(-1)
    return cache


@torch.no_grad()
def discrete_nelbo(kernel: Kernel, model, x0: torch.Tensor, num_steps: int = 1000, mask: torch.Tensor | None = None,
                   mc_steps: int | None = 8, generator: torch.Generator | None = None, reading: Reading = PLAIN
                   ) -> dict:
    """T-step variational bound -log p(x0) <= KL(q_1 || pi) + sum_{i=1..T} E KL(q(x_{i-1}|x_i, x0) || p), per sequence.

    Times t_i = i / T. ``mc_steps=None`` sums all T steps (one x_t sample per step and sequence);
    an integer draws that many stratified step indices shared by the batch and rescales by T, an
    unbiased estimate. Returns {"nelbo": [B] nats, "prior": [B], "num_tokens": [B]}.
    """
    B = x0.shape[0]
    counted = _positions(x0, mask)
    if mc_steps is None:
        steps = torch.arange(1, num_steps + 1)
        scale = 1.0
    else:
        u = torch.rand(mc_steps, generator=generator, device=x0.device).cpu()
        steps = ((torch.arange(mc_steps) + u) / mc_steps * num_steps).floor().long().clamp(0, num_steps - 1) + 1
        scale = num_steps / mc_steps
    total = torch.zeros(B, dtype=torch.float64, device=x0.device)
    for i in steps.tolist():  # loop over diffusion steps (each a full batched model call)
        s, t = (i - 1) / num_steps, i / num_steps
        xt, _ = kernel.sample_xt(x0, torch.full((B,), t, device=x0.device), generator=generator)
        total += step_kl(kernel, model, x0, xt, s, t, counted, reading)
    prior = prior_kl(kernel, x0, counted)
    return {"nelbo": prior + scale * total, "prior": prior, "num_tokens": counted.sum(-1)}


BOUNDS = ("continuous", "tstep")


def continuous_bound_estimates(kernel: Kernel, model, x0: torch.Tensor, t: torch.Tensor,
                               mask: torch.Tensor | None = None, generator: torch.Generator | None = None,
                               reading: Reading = PLAIN, t_weight: torch.Tensor | None = None,
                               clean: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Every bound of ``kernel.cfg.continuous_bounds`` per sequence, [B] nats, on ONE draw x_t ~ q_t(.|x0)
    and one model call at the caller's t [B] (one-sample estimates over t; each includes KL(q_1 || pi),
    which is 0 when alpha_1 = 0). The model's output is read with ``reading``; when it carries the
    change-aware correction, each bound is also given uncorrected (``NAME_uncorrected``: the same logits
    read without it, a bound of another generative model, so never a candidate for :func:`tightest`).

    ``clean`` (Bool[B, L]): positions held clean, never corrupted (a context): with ``mask`` off them, the
    bounds are of -log p(x0[mask] | x0[clean]) under the reverse process that keeps them fixed, the one
    the samplers run with a prompt (the forward noise is independent across positions, so holding some
    positions clean is the same process on the others; docs/evaluation.md, lm-evaluation-harness)."""
    xt, _ = kernel.sample_xt(x0, t, generator=generator)
    if clean is not None:
        xt = torch.where(clean, x0, xt)
    logits = model(xt, t)
    prior = prior_kl(kernel, x0, mask)
    if reading.mask_id is not None and not kernel.cfg.absorbing:  # no support bias: [MASK] is never clean
        logits = logits.index_fill(-1, torch.tensor([reading.mask_id], device=logits.device), -math.inf)
        reading = replace(reading, mask_id=None)  # excluded once here, for every bound and both readings
    out, lse = _bounds_of_logits(kernel, logits, x0, xt, t, mask, prior, reading)
    if reading.log_ratio:  # the same logits read without the correction; UDLM's logsumexp (if any) reused
        uncorrected, _ = _bounds_of_logits(kernel, logits, x0, xt, t, mask, prior, reading.uncorrected(), lse)
        out.update({f"{name}_uncorrected": value for name, value in uncorrected.items()})
    if t_weight is not None:  # importance sampling of t (time_sampling.bound_times): weigh the integral part only
        w = t_weight.to(torch.float64)
        out = {name: prior + w * (value - prior) for name, value in out.items()}
    return out


def _bounds_of_logits(kernel, logits, x0, xt, t, mask, prior, reading: Reading, lse: torch.Tensor | None = None
                      ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """({name: [B] nats}, the logits' logsumexp per position when a V-sized pass computed it, else ``lse``)."""
    out = {}
    # UDLM first: its V-sized pass yields the logsumexp the conditional-path ELBO reuses
    for name in sorted(kernel.cfg.continuous_bounds, key=lambda n: n != "udlm_continuous"):
        if name == "mdlm_continuous":
            out[name] = mdlm_integrand(kernel, logits, x0, xt, t, mask) + prior
        elif name == "udlm_continuous":
            alpha, dalpha = alpha_and_derivative(kernel.cfg, t)
            # a kernel-aware model's logits are f, what UDLM is fed; a direct one's are fed as they are and,
            # below, converted (logits - log q_t(x_t | v))
            shift = udlm_self_shift(kernel, reading, xt, alpha) if reading.kernel_aware else None
            per_token, lse = udlm_integrand(logits, x0, xt, alpha, dalpha, lse=lse, return_lse=True,
                                            self_shift=shift)
            out[name] = (per_token * _positions(x0, mask)).sum(-1) + prior
            if not reading.kernel_aware:
                shift = udlm_self_shift(kernel, reading, xt, alpha)
                per_token = udlm_integrand(logits, x0, xt, alpha, dalpha, lse=lse, self_shift=shift)
                out["udlm_converted"] = (per_token * _positions(x0, mask)).sum(-1) + prior
        elif name == "resampled_continuous":
            if name in continuous_bound_names(kernel, reading, uncorrected=False):
                out[name] = resampled_per_token(kernel, logits, x0, xt, t, mask, reading=reading).sum(-1) + prior
        else:
            out[name] = ctelbo_per_token(kernel, logits, x0, xt, t, mask, lse=lse, reading=reading).sum(-1) + prior
    return {name: out[name] for name in continuous_bound_names(kernel, reading, uncorrected=False)}, lse


def continuous_bound_names(kernel: Kernel, reading: Reading = PLAIN, uncorrected: bool = True) -> tuple[str, ...]:
    """The names :func:`continuous_bound_estimates` returns: the kernel's, plus for a ``direct`` uniform model
    UDLM fed the converted posterior (``udlm_converted``), without the resampling chain's bound for a ``direct``
    model (or a SemDLM+ configured without a global branch), plus each ``_uncorrected`` under a correction."""
    names = kernel.cfg.continuous_bounds
    if "udlm_continuous" in names and not reading.kernel_aware:
        names = names + ("udlm_converted",)
    if "resampled_continuous" in names and not (reading.kernel_aware and resampling_applies(kernel)):
        names = tuple(n for n in names if n != "resampled_continuous")  # its model reads f kernel-aware
    return names + tuple(f"{n}_uncorrected" for n in names) if reading.log_ratio and uncorrected else names


def udlm_self_shift(kernel: Kernel, reading: Reading, xt: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor | None:
    """What turns the logits into the clean-token scores UDLM is fed (its optimum is f, not the posterior),
    at v = x_t only (uniform: q_t(z | v) = (1 - alpha) / V off z): -log(1 + V alpha / (1 - alpha)) for a
    ``direct`` model (logits - log q_t(x_t | v), the converted posterior), 0 for a ``kernel`` one, plus the
    change-aware correction. [B * L] float64 (``alpha`` per sequence), or None when nothing is added."""
    if "udlm_continuous" not in kernel.cfg.continuous_bounds:
        raise ValueError(f"UDLM's closed form is the uniform kernel's, not {kernel.cfg.name!r}'s")
    per_seq = torch.full_like(alpha.to(torch.float64), reading.log_ratio)
    if not reading.kernel_aware:
        a = alpha.to(torch.float64)
        per_seq = per_seq - torch.log1p(kernel.vocab_size * a / (1.0 - a).clamp_min(1e-300))
    if not bool(per_seq.any()):
        return None
    return per_seq.unsqueeze(-1).expand(xt.shape).reshape(-1)


def bound_estimates(kernel: Kernel, model, x0: torch.Tensor, mask: torch.Tensor | None = None, *,
                    bound: str = "continuous", t: torch.Tensor | None = None,
                    generator: torch.Generator | None = None, num_steps: int = 1000, mc_steps: int | None = 8,
                    reading: Reading = PLAIN, t_weight: torch.Tensor | None = None,
                    clean: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The kernel's bounds on -log p(x0) per sequence, {name: [B] nats}: the one place bounds are chosen.

    ``bound="continuous"`` (default): :func:`continuous_bound_estimates` at the caller's ``t`` [B].
    ``bound="tstep"``: the T-step bound :func:`discrete_nelbo` (``num_steps``, ``mc_steps``; ``t`` unused),
    kept as an option: valid, looser for the semantic kernels, as tight for ``mask`` and ``uniform`` (Sec 6.6).
    Reports sum each name over the data and keep the smallest total (:func:`tightest`): each is a
    valid bound, so the smallest is too, whereas a per-sequence minimum would not be.
    """
    if bound not in BOUNDS:
        raise ValueError(f"bound must be one of {BOUNDS}, got {bound!r}")
    if bound == "tstep":
        if clean is not None:
            raise ValueError("the T-step bound does not hold positions clean: use the continuous-time bounds")
        return {f"discrete_T{num_steps}": discrete_nelbo(kernel, model, x0, num_steps=num_steps, mask=mask,
                                                         mc_steps=mc_steps, generator=generator,
                                                         reading=reading)["nelbo"]}
    if t is None:
        raise ValueError("the continuous-time bounds are estimated at a time t per sequence: pass t")
    return continuous_bound_estimates(kernel, model, x0, t, mask, generator, reading, t_weight, clean)


def tightest(totals: dict[str, float]) -> tuple[str, float]:
    """(name, total) of the smallest of several valid bounds of the model as read, summed over the same data
    (the ``_uncorrected`` figures belong to another reading of the logits and are left out)."""
    candidates = {k: v for k, v in totals.items() if "uncorrected" not in k}
    name = min(candidates, key=candidates.get)
    return name, candidates[name]
