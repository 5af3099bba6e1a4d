"""``generate``: the semi-autoregressive block loop over the block samplers (see base.py).

With a :class:`~pipeline.sampling.template.GenerationTemplate` the fixed tokens before the template's
``start`` are the clean prefix of the first block and ``cfg.strides`` blocks of nearly equal length
cover the rest (fixed tokens inside a block stay fixed). With ``stop_id`` the loop ends early once
every row holds that token (an EOS) after its prompt in a finished block: the remaining blocks would
be cut off anyway (pipeline/sampling/template.py ``trim_at_stop``).
"""
from __future__ import annotations

import torch

from pipeline.sampling.base import Denoiser, SamplerConfig
from pipeline.sampling.blockwise import denoise_block_eq121
from pipeline.sampling.ctmc import denoise_block_ctmc
from pipeline.sampling.mdlm import denoise_block_mdlm
from pipeline.sampling.penalty import SemanticAssociation
from pipeline.sampling.tau_leaping import denoise_block_tau_leaping
from pipeline.sampling.template import GenerationTemplate, block_bounds, stop_hits

BLOCK_SAMPLERS = {"ctmc": denoise_block_ctmc, "blockwise": denoise_block_eq121,
                  "tau_leaping": denoise_block_tau_leaping,
                  "mdlm": denoise_block_mdlm}


@torch.no_grad()
def generate(model, kernel, cfg: SamplerConfig, batch_size: int, generator: torch.Generator | None = None,
             association: SemanticAssociation | None = None, device=None,
             template: GenerationTemplate | None = None, stop_id: int | None = None, reading=None
             ) -> tuple[torch.Tensor, Denoiser]:
    """Sample ``batch_size`` sequences of ``cfg.seq_len`` tokens; returns (ids Long[B, L'], denoiser).

    ``template`` has one row per sequence (``GenerationTemplate.for_batch``) or a single row for all.
    L' = cfg.seq_len unless ``stop_id`` skipped the last blocks (then every row holds ``stop_id``).
    ``reading``: how the output is read as a posterior (default: the model's ``posterior_reading``).
    """
    block_fn = BLOCK_SAMPLERS[cfg.method]
    if cfg.method == "mdlm" and not kernel.cfg.absorbing:
        raise ValueError(f"the mdlm sampler needs an absorbing (mask) kernel, the model uses {kernel.cfg.name!r}")
    device = device or kernel.device
    if template is not None:
        if template.seq_len != cfg.seq_len:
            raise ValueError(f"template length {template.seq_len} != seq_len {cfg.seq_len}")
        if template.tokens.shape[0] not in (1, batch_size):
            raise ValueError(f"template has {template.tokens.shape[0]} rows for a batch of {batch_size}")
        template = template.for_batch(0, batch_size, device)
    den = Denoiser(model, kernel, cfg, association, template, reading)
    start = template.start if template is not None else 0
    prompt_ends = template.prompt_lens if template is not None else 0
    x = template.tokens[:, :start] if template is not None else torch.zeros(batch_size, 0, dtype=torch.long,
                                                                             device=device)
    for a, b in block_bounds(cfg.seq_len, cfg.strides, start):  # earlier blocks are clean context
        block = block_fn(den, x, b - a, cfg.steps_per_block, generator)
        x = torch.cat([x, block], dim=1)
        if stop_id is not None and b < cfg.seq_len and bool(stop_hits(x, stop_id, prompt_ends).any(1).all()):
            break
    return x, den
