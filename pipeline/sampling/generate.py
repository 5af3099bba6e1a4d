"""``generate``: the semi-autoregressive block loop over the block samplers (see base.py)."""
from __future__ import annotations

import torch

from pipeline.sampling.base import Denoiser, SamplerConfig
from pipeline.sampling.blockwise import denoise_block_eq121
from pipeline.sampling.ctmc import denoise_block_ctmc
from pipeline.sampling.mdlm import denoise_block_mdlm
from pipeline.sampling.penalty import SemanticAssociation
from pipeline.sampling.tau_leaping import denoise_block_tau_leaping

BLOCK_SAMPLERS = {"ctmc": denoise_block_ctmc, "blockwise": denoise_block_eq121,
                  "tau_leaping": denoise_block_tau_leaping,
                  "mdlm": denoise_block_mdlm}


@torch.no_grad()
def generate(model, kernel, cfg: SamplerConfig, batch_size: int, generator: torch.Generator | None = None,
             association: SemanticAssociation | None = None, device=None) -> tuple[torch.Tensor, Denoiser]:
    """Sample ``batch_size`` sequences of ``cfg.seq_len`` tokens; returns (ids Long[B, L], denoiser)."""
    block_fn = BLOCK_SAMPLERS[cfg.method]
    if cfg.method == "mdlm" and kernel.cfg.name != "mask":
        raise ValueError(f"the mdlm sampler needs the mask kernel, the model uses {kernel.cfg.name!r}")
    device = device or kernel.device
    den = Denoiser(model, kernel, cfg, association)
    x = torch.zeros(batch_size, 0, dtype=torch.long, device=device)
    for _ in range(cfg.strides):  # earlier blocks are clean context for the next one
        block = block_fn(den, x, cfg.block_len, cfg.steps_per_block, generator)
        x = torch.cat([x, block], dim=1)
    return x, den
