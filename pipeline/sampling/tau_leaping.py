"""CTMC sampler with tau-leaping and a predictor-corrector scheme (Campbell et al. 2022), any kernel.

Reverse rates (docs/sampling.md has the derivation). The reverse generator at x_t = z is
R^_t(z -> j) = sum_v p_theta(v | x_t) R_t(z -> j | x0 = v), the forward-conditional reverse rates
averaged over the model's clean-token posterior. Per kernel:

* ``mask``: R^_t([MASK] -> v) = -alpha'_t / (1 - alpha_t) p_theta(v | x_t), revealed tokens are
  absorbing. A tau-leap over [s, t] with the integrated rate reveals a [MASK] with probability
  (alpha_s - alpha_t) / (1 - alpha_t) (MDLM's ancestral step).
* ``uniform``, ``semdlm``, ``semdlm_softmax``, ``semdlm_plus``: the forward process of one position
  moves clean -> local branch -> global branch (the monotone branch coupling of
  pipeline/core/likelihood.py); R_t(z -> j | v) is the t-derivative of that coupling's conditional
  q(x_s = j | x_t = z, x0 = v). The leap over [s, t] uses the exact conditional of the coupling,
  weighted by p_theta evaluated once at t (rates frozen over the leap, all positions independent).

Clean-token weights are restricted to v with q_t(z | v) > 0 (for ``mask`` this is SUBS).

Corrector: after each predictor step (s > 0), ``corrector_steps`` Gibbs re-noising moves draw
x~0 ~ p_theta(. | x_s) and x'_s ~ q_s(. | x~0) and accept x'_s at a random ``corrector_frac`` of
the positions. Updating one position this way is an exact Gibbs step on (x0^i, x_s) for an exact
p_theta (x_s^i depends on nothing but x0^i); a small fraction keeps the parallel update close to it.
"""
from __future__ import annotations

import torch

from pipeline.core.likelihood import reverse_step_probs

from .base import Denoiser, initial_block, time_grid
from .draws import categorical, truncate
from .mdlm import ancestral_reveal_probability


def restricted_weights(probs: torch.Tensor, lik: torch.Tensor) -> torch.Tensor:
    """p_theta(v | x_t) restricted to q_t(x_t | v) > 0 and renormalised; [N, V] float64."""
    w = probs * (lik > 0)
    total = w.sum(-1, keepdim=True)
    return torch.where(total > 0, w / total.clamp_min(1e-300), lik / lik.sum(-1, keepdim=True))


def tau_leap_step(kernel, probs: torch.Tensor, block: torch.Tensor, s: float, t: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """One predictor leap t -> s for every position of ``block`` [B, L] given p_theta ``probs`` [B, L, V]."""
    if kernel.cfg.absorbing:
        reveal_p = ancestral_reveal_probability(float(kernel.alpha(t)), float(kernel.alpha(s)))
        masked = block == kernel.mask_id
        u = torch.rand(block.shape, generator=generator, device=block.device, dtype=torch.float64)
        return torch.where(masked & (u < reveal_p), categorical(probs, generator), block)
    z = block.reshape(-1)
    lik = kernel.likelihood_of(z, t)
    weights = restricted_weights(probs.reshape(-1, kernel.vocab_size), lik)
    transition = reverse_step_probs(kernel, z, weights, s, t, lik)
    return categorical(transition, generator).reshape(block.shape)


@torch.no_grad()
def denoise_block_tau_leaping(den: Denoiser, prefix: torch.Tensor, block_len: int, steps: int,
                              generator: torch.Generator | None = None) -> torch.Tensor:
    kernel, cfg = den.kernel, den.cfg
    B, P = prefix.shape
    block = initial_block(kernel, B, block_len, prefix.device, generator, den, P)
    for t, s in time_grid(steps):
        probs = truncate(den.probs(torch.cat([prefix, block], 1), t, start=P), cfg.top_k, cfg.top_p)
        block = den.hold(tau_leap_step(kernel, probs, block, s, t, generator), P)
        for _ in range(cfg.corrector_steps if s > 0 else 0):
            probs = truncate(den.probs(torch.cat([prefix, block], 1), s, start=P), cfg.top_k, cfg.top_p)
            renoised, _ = kernel.sample_xt(categorical(probs, generator),
                                           torch.full((B,), s, device=block.device), generator=generator)
            u = torch.rand(block.shape, generator=generator, device=block.device, dtype=torch.float64)
            block = den.hold(torch.where(u < cfg.corrector_frac, renoised, block), P)
    return block
