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

from dataclasses import dataclass

import torch

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
    t_min: float = 1e-3
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
                     accum_steps: int, t_min: float = 1e-3, device: torch.device | str = "cpu") -> torch.Tensor:
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


def iid_times(batch: int, generator: torch.Generator | None = None, t_min: float = 1e-3,
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
