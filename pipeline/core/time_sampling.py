"""Diffusion-time sampling: low-discrepancy (antithetic) t stratified over the GLOBAL batch.

A Monte-Carlo estimate of the continuous-time objective E_t[...] has lower variance when the t of a
batch cover [0, 1) evenly (Kingma et al. 2021 "VDM", Sahoo et al. 2024 "MDLM": low-discrepancy
sampler). Doing that per device, as most code does, stratifies each micro-batch but not the batch the
optimizer actually sees. Here every sample of one optimizer step gets a distinct global index
g in [0, N) (N = global batch) and

    t_g = (u0 + g / N) mod 1,      u0 ~ U[0, 1) shared by all ranks for that step,

so the union over ranks and gradient-accumulation micro-steps holds exactly one t per stratum
[k/N, (k+1)/N). u0 comes from a per-step seed, so no communication is needed. Global indices are
interleaved, g = i * (world * accum) + (accum_step * world + rank) for local sample i, so every single
micro-batch is itself spread over [0, 1) (coarser strata) rather than covering one narrow slice.
Finally t is clamped to [t_min, 1] (t = 0 is the clean data, where the bound has no term).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# The one t_min: training, validation, evaluation and the docs clamp t to [T_MIN, 1] (MDLM's 1e-3). With the
# kernel-aware reading the integrand grows like log(1/t), so the clamp moves the bound by ~T_MIN nats per token.
T_MIN = 1e-3
_SEED_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: decorrelates (seed, step) pairs


def step_seed(base_seed: int, step: int) -> int:
    """A per-optimizer-step seed every rank derives identically (splitmix64 of base_seed and step)."""
    z = (int(base_seed) * _SEED_MIX + int(step) + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


@dataclass
class TimeSamplerConfig:
    global_batch: int                 # sequences per optimizer step, all ranks and micro-steps
    world_size: int = 1
    accum_steps: int = 1
    t_min: float = T_MIN
    antithetic: bool = True           # False: plain iid U[t_min, 1] (for comparison)
    base_seed: int = 0

    def __post_init__(self) -> None:
        if self.world_size < 1 or self.accum_steps < 1:
            raise ValueError(f"world_size and accum_steps must be >= 1, got {self.world_size}, {self.accum_steps}")
        shards = self.world_size * self.accum_steps
        if self.global_batch < 1 or self.global_batch % shards:
            raise ValueError(f"global_batch={self.global_batch} must be a positive multiple of "
                             f"world_size * accum_steps = {shards}")
        if not 0.0 <= self.t_min < 1.0:
            raise ValueError(f"t_min must be in [0, 1), got {self.t_min}")

    @property
    def micro_batch(self) -> int:
        return self.global_batch // (self.world_size * self.accum_steps)


def global_indices(micro_batch: int, rank: int, world_size: int, accum_step: int,
                   accum_steps: int) -> torch.Tensor:
    """Global stratum index of each local sample (interleaved, see the module docstring)."""
    if not (0 <= rank < world_size and 0 <= accum_step < accum_steps):
        raise ValueError(f"rank {rank} / accum_step {accum_step} out of range "
                         f"(world_size {world_size}, accum_steps {accum_steps})")
    shards = world_size * accum_steps
    return torch.arange(micro_batch, dtype=torch.int64) * shards + (accum_step * world_size + rank)


def stratified_times(seed: int, global_batch: int, rank: int, world_size: int, accum_step: int,
                     accum_steps: int, t_min: float = T_MIN, device: torch.device | str = "cpu") -> torch.Tensor:
    """t for the local micro-batch of (rank, accum_step): Float[global_batch / (world * accum)].

    ``seed`` must be the same on every rank for one optimizer step (use :func:`step_seed`).
    """
    shards = world_size * accum_steps
    if global_batch % shards:
        raise ValueError(f"global_batch={global_batch} is not divisible by world_size * accum_steps = {shards}")
    u0 = torch.rand((), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    g = global_indices(global_batch // shards, rank, world_size, accum_step, accum_steps)
    t = torch.remainder(u0 + g.to(torch.float64) / global_batch, 1.0)
    return t.clamp(min=t_min, max=1.0).to(device=device, dtype=torch.float32)


def iid_times(batch: int, generator: torch.Generator | None = None, t_min: float = T_MIN,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """Plain iid t ~ U[0, 1) clamped to [t_min, 1] (the baseline the stratified sampler improves on)."""
    t = torch.rand(batch, generator=generator, dtype=torch.float64)
    return t.clamp(min=t_min, max=1.0).to(device=device, dtype=torch.float32)


class TimeSampler:
    """Stateless per-step sampler: ``sample(step, rank, accum_step)`` gives that micro-batch's t."""

    def __init__(self, cfg: TimeSamplerConfig):
        self.cfg = cfg

    def sample(self, step: int, rank: int = 0, accum_step: int = 0,
               device: torch.device | str = "cpu") -> torch.Tensor:
        c = self.cfg
        seed = step_seed(c.base_seed, step)
        if c.antithetic:
            return stratified_times(seed, c.global_batch, rank, c.world_size, accum_step, c.accum_steps,
                                    c.t_min, device)
        # iid: still a distinct stream per (step, rank, accum_step), reproducible on restart
        stream = torch.Generator().manual_seed(step_seed(seed, accum_step * c.world_size + rank))
        return iid_times(c.micro_batch, stream, c.t_min, device)


# --------------------------------------------------------------------------- t for the bounds: importance sampling
T_SAMPLINGS = ("defensive", "uniform")
DEFENSIVE_UNIFORM_SHARE = 0.5  # m: the proposal's uniform share (every weight 1 / p(t) <= 1 / m)


def bound_times(u: torch.Tensor, scheme: str = "defensive", t_min: float = T_MIN) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, weight) for a bound's Monte-Carlo estimate over t from u in [0, 1) (stratified by the caller).

    The bound is KL(q_1 || pi) + int_0^1 g(max(t, t_min)) dt (t clamped as everywhere, ``T_MIN``); an
    estimate is prior + weight * g(t) with t ~ p and weight = 1 / p(t), unbiased for any p > 0.
    ``uniform``: p = 1. Fine when g grows like log(1/t) (kernel-aware models, MDLM), but a model whose
    integrand grows like c / t (a ``direct`` non-mask model) then has a variance of order c^2 / t_min: rare
    small t carry most of the bound and the standard error is not to be trusted.
    ``defensive`` (default): p(t) = m + (1 - m) / ((t + t_min) ln(1 + 1 / t_min)), a mixture of U(0, 1) and
    a density ~1 / t down to t_min (m = ``DEFENSIVE_UNIFORM_SHARE``): weight <= 1 / m everywhere, and
    weight * c / t stays below c (t + t_min) ln(1 + 1 / t_min) / ((1 - m) t), bounded, so the variance is
    finite for both laws. Drawn by inverting its CDF F(t) = m t + (1 - m) ln(1 + t / t_min) / ln(1 + 1 / t_min)
    (bisection, float64), so stratifying u stratifies t.
    """
    u = u.to(torch.float64)
    if scheme == "uniform":
        return u.clamp(min=t_min, max=1.0), torch.ones_like(u)
    if scheme != "defensive":
        raise ValueError(f"t sampling must be one of {T_SAMPLINGS}, got {scheme!r}")
    m, eps = DEFENSIVE_UNIFORM_SHARE, t_min
    log_norm = math.log1p(1.0 / eps)
    lo, hi = torch.zeros_like(u), torch.ones_like(u)
    for _ in range(60):  # bisection of the CDF to float64 resolution
        mid = 0.5 * (lo + hi)
        below = m * mid + (1.0 - m) * torch.log1p(mid / eps) / log_norm < u
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    t = 0.5 * (lo + hi)
    density = m + (1.0 - m) / ((t + eps) * log_norm)
    return t.clamp(min=t_min, max=1.0), 1.0 / density
