"""Blockwise predictor sampler of the paper (App E.1, Eq 121), one block at a time.

At each step t -> s of a block the model predicts p_theta(x0 | x_t) (with the Eq 23 penalty), a
clean proposal x~0 is drawn from its top-k / top-p truncation, projected to the lower noise level
with the same forward kernel, x~_s ~ q_s(. | x~0), and position i takes x~_s^i with the probability
of :func:`replacement_probability`; optionally a token whose confidence reaches a threshold is
frozen for the rest of the block.
"""
from __future__ import annotations

import torch

from .base import Denoiser, initial_block, noise_level, time_grid
from .draws import categorical, truncate


def replacement_probability(p_t: float, p_s: float, confidence: torch.Tensor, rho: float) -> torch.Tensor:
    """Eq 121: Pr(replace position i) = (p_t - p_s) / p_t * (1 - p_theta(x_t^i | x_t))^rho.

    p_t = 1 - alpha_t is the noise level at t (p_s at the next, lower level s < t); ``confidence``
    is the model's probability of the token currently at the position.
    """
    if p_t <= 0.0:
        return torch.zeros_like(confidence)
    step_share = min(max((p_t - p_s) / p_t, 0.0), 1.0)
    return step_share * (1.0 - confidence).clamp(0.0, 1.0).pow(rho)


@torch.no_grad()
def denoise_block_eq121(den: Denoiser, prefix: torch.Tensor, block_len: int, steps: int,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Generate one block [B, block_len] after the clean ``prefix`` [B, P] (Eq 121 predictor)."""
    kernel, cfg = den.kernel, den.cfg
    B, P = prefix.shape
    block = initial_block(kernel, B, block_len, prefix.device, generator, den, P)
    frozen = torch.zeros_like(block, dtype=torch.bool)
    for t, s in time_grid(steps):
        probs = den.probs(torch.cat([prefix, block], 1), t, start=P)  # [B, Lb, V] float64
        confidence = probs.gather(-1, block.unsqueeze(-1)).squeeze(-1)
        proposal = categorical(truncate(probs, cfg.top_k, cfg.top_p), generator)
        projected, _ = kernel.sample_xt(proposal, torch.full((B,), s, device=block.device), generator=generator)
        replace_p = replacement_probability(noise_level(kernel, t), noise_level(kernel, s), confidence, cfg.rho)
        u = torch.rand(block.shape, generator=generator, device=block.device, dtype=torch.float64)
        replace = (u < replace_p) & ~frozen
        block = den.hold(torch.where(replace, projected, block), P)
        if cfg.freeze_threshold is not None:
            frozen |= ~replace & (confidence >= cfg.freeze_threshold)
    return block
