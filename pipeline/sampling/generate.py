"""``generate``: the semi-autoregressive block loop over the block samplers (see base.py).

Past the context (``cfg.length`` > ``cfg.seq_len``) the loop goes on in blocks of ``cfg.block_len``
tokens, each conditioned on the last ``seq_len - block_len`` tokens: the model always sees a window of
``seq_len`` (MDLM's semi-autoregressive sampling). A prompt or template only concerns the first window.
With ``cfg.entropy_stop`` a row whose last ``cfg.entropy_window`` tokens have an empirical entropy below
it after a block stops and is cut before that window, never into its prompt (BD3-LM's rule, which checks the
last 256 tokens against 4 nats); ``Denoiser.entropy_cut`` says where.

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
    total = cfg.total_len
    cut = torch.full((batch_size,), -1, dtype=torch.long, device=device) if cfg.entropy_stop else None
    bounds = block_bounds(cfg.seq_len, cfg.strides, start)
    while bounds:
        a, b = bounds.pop(0)
        # the model sees seq_len tokens at most: the block and the clean tokens just before it
        context = x[:, max(0, x.shape[1] - (cfg.seq_len - (b - a))):]
        x = torch.cat([x, block_fn(den, context, b - a, cfg.steps_per_block, generator)], dim=1)
        done = torch.zeros(batch_size, dtype=torch.bool, device=device)
        if cut is not None:
            stopped = (cut < 0) & low_entropy(x, cfg.entropy_window, cfg.entropy_stop)
            # cut before the repetitive window (BD3-LM), never into the prompt
            at = torch.clamp(torch.as_tensor(prompt_ends, device=device), min=x.shape[1] - cfg.entropy_window)
            cut = torch.where(stopped, at.expand(batch_size), cut)
            done |= cut >= 0
        if stop_id is not None:
            done |= stop_hits(x, stop_id, prompt_ends).any(1)
        if x.shape[1] >= total or ((stop_id is not None or cut is not None) and bool(done.all())):
            break  # every row has stopped: the remaining blocks would be cut off anyway
        if not bounds:  # past the first window: the template's fixed tokens all lie behind
            den.template = None
            bounds.append((x.shape[1], min(x.shape[1] + cfg.block_len, total)))
    den.entropy_cut = cut
    return x, den


def low_entropy(x: torch.Tensor, window: int, threshold: float) -> torch.Tensor:
    """Bool[B]: rows of ``x`` [B, L] whose last ``window`` tokens (all of them when L < window: False) have an
    empirical unigram entropy below ``threshold`` nats (BD3-LM's stop rule, ``_check_stop_conds``)."""
    if x.shape[1] < window:
        return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    tail = x[:, -window:]
    counts = torch.zeros(x.shape[0], int(tail.max()) + 1, dtype=torch.float64, device=x.device)
    counts.scatter_add_(1, tail, torch.ones_like(tail, dtype=torch.float64))
    p = counts / window
    return torch.special.entr(p).sum(1) < threshold
