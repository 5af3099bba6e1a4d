"""Samplers of the mask kernel: MDLM ancestral (with logit caching and ReMDM remasking) and the
fixed / randomized unmasking-size schedules of pipeline/sampling/unmasking.py.

Ancestral (Sahoo et al. 2024): from t to s each [MASK] is revealed with probability
(alpha_s - alpha_t) / (1 - alpha_t), its value drawn from p_theta(x0 | x_t); revealed tokens are
carried over. When a row revealed nothing in the previous step its input is unchanged, so its
logits are reused instead of calling the network ("caching"; only for models that ignore t,
otherwise the logits do change with t).

ReMDM-cap (Wang et al. 2025): revealed tokens are re-masked with probability
sigma_t = min(eta, (1 - alpha_s) / alpha_t), and masked ones revealed with
(alpha_s - (1 - sigma_t) alpha_t) / (1 - alpha_t), which keeps the marginal at s.

Schedules ``fixed`` / ``tc`` / ``dtc``: K iterations reveal sizes[k] uniformly chosen masked
positions each (sizes from :func:`pipeline.sampling.unmasking.schedule_sizes`, a fresh draw per sequence for
the randomized ones); the model sees t = the share of the block still masked (= the time of the
log-linear schedule at that masking level).

Conditional generation (pipeline/sampling/template.py): fixed tokens are never [MASK], so only free
positions are revealed; ReMDM re-masks free positions only; the schedules and t count free positions.
"""
from __future__ import annotations

import torch

from pipeline.sampling.unmasking import schedule_sizes, select_positions

from .base import Denoiser, initial_block, time_grid
from .draws import categorical, truncate


def ancestral_reveal_probability(alpha_t: float, alpha_s: float) -> float:
    """MDLM: Pr(a [MASK] at t is revealed at s) = (alpha_s - alpha_t) / (1 - alpha_t)."""
    return 1.0 if alpha_t >= 1.0 else min(max((alpha_s - alpha_t) / (1.0 - alpha_t), 0.0), 1.0)


def remdm_cap_probabilities(alpha_t: float, alpha_s: float, eta: float) -> tuple[float, float]:
    """ReMDM-cap: (sigma_t = remask probability of a revealed token, reveal probability of a [MASK])."""
    sigma = min(eta, (1.0 - alpha_s) / alpha_t) if alpha_t > 0 else 0.0
    reveal = 1.0 if alpha_t >= 1.0 else (alpha_s - (1.0 - sigma) * alpha_t) / (1.0 - alpha_t)
    return sigma, min(max(reveal, 0.0), 1.0)


@torch.no_grad()
def denoise_block_mdlm(den: Denoiser, prefix: torch.Tensor, block_len: int, steps: int,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    if den.cfg.schedule == "ancestral":
        return _ancestral(den, prefix, block_len, steps, generator)
    return _scheduled(den, prefix, block_len, steps, generator)


def _cpu_generator(generator: torch.Generator | None) -> torch.Generator | None:
    """The schedule draws its shift on the CPU: derive a CPU generator from a (possibly CUDA) one."""
    if generator is None or generator.device.type == "cpu":
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return torch.Generator().manual_seed(seed)


def _row_sizes(schedule: str, n_free: int, steps: int, generator) -> list[int]:
    """Reveal sizes of one row with ``n_free`` generated positions: with fewer than ``steps`` of them
    (a prompt or template fixes the rest) one per step, then nothing."""
    if n_free == 0:
        return [0] * steps
    k = min(steps, n_free)
    return schedule_sizes(schedule, n_free, k, _cpu_generator(generator)) + [0] * (steps - k)


def _draw_clean(den: Denoiser, probs: torch.Tensor, generator) -> torch.Tensor:
    return categorical(truncate(probs, den.cfg.top_k, den.cfg.top_p), generator)


def _ancestral(den: Denoiser, prefix, block_len, steps, generator) -> torch.Tensor:
    kernel, cfg, mask_id = den.kernel, den.cfg, den.kernel.mask_id
    B, P = prefix.shape
    block = initial_block(kernel, B, block_len, prefix.device, generator, den, P)
    free = den.free(P, block_len)
    probs, stale = None, torch.ones(B, dtype=torch.bool, device=prefix.device)
    may_cache = cfg.cache and not den.time_conditioned
    for t, s in time_grid(steps):
        if probs is None or not may_cache:
            probs = den.probs(torch.cat([prefix, block], 1), t, start=P)
        elif stale.any():  # only rows whose input changed go through the network
            idx = stale.nonzero().squeeze(-1)
            probs[idx] = den.probs(torch.cat([prefix[idx], block[idx]], 1), t, start=P)
        a_t, a_s = float(kernel.alpha(t)), float(kernel.alpha(s))
        masked = block == mask_id
        u = torch.rand(block.shape, generator=generator, device=block.device, dtype=torch.float64)
        if cfg.remask == "remdm_cap":
            sigma, reveal_p = remdm_cap_probabilities(a_t, a_s, cfg.remask_eta)
            remask = ~masked & (u < sigma)
            if free is not None:  # a fixed token is never re-masked
                remask &= free
        else:
            reveal_p, remask = ancestral_reveal_probability(a_t, a_s), torch.zeros_like(masked)
        reveal = masked & (u < reveal_p)
        new = torch.where(reveal, _draw_clean(den, probs, generator), block)
        new = torch.where(remask, torch.full_like(block, mask_id), new)
        stale = (new != block).any(-1)
        block = new
    return block


def _scheduled(den: Denoiser, prefix, block_len, steps, generator) -> torch.Tensor:
    kernel, cfg, mask_id = den.kernel, den.cfg, den.kernel.mask_id
    B, P = prefix.shape
    block = initial_block(kernel, B, block_len, prefix.device, generator, den, P)
    free = den.free(P, block_len)
    n_free = [block_len] * B if free is None else free.sum(1).tolist()
    sizes = torch.tensor([_row_sizes(cfg.schedule, n, steps, generator) for n in n_free],
                         dtype=torch.long, device=prefix.device)  # [B, K]; one loop over sequences
    den.last_schedule_sizes = sizes.clone()
    # per row share of the free positions still masked; the factor is exactly 1 when all are free
    share = torch.tensor([block_len / n if n else 0.0 for n in n_free], dtype=torch.float64, device=prefix.device)
    for k in range(steps):
        masked = block == mask_id
        t = masked.double().mean(1) * share
        probs = den.probs(torch.cat([prefix, block], 1), t, start=P)
        reveal = select_positions(masked, sizes[:, k], generator)
        block = torch.where(reveal, _draw_clean(den, probs, generator), block)
    return block
