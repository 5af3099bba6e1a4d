"""The frequency floor: what a kernel's bound gives a model that knows only token frequencies.

The unigram reference (baselines.py) asks whether the *bound* is below what token frequencies alone
achieve. That is a sufficient test of learning, not a necessary one, for a kernel whose bound is not
tight: the conditional-path ELBO of a semantic kernel stays ~1 nat/token above the exact NLL even with
the exact posterior as the denoiser (docs/likelihood.md §6.6, "Where the remaining gap comes from").
A model can have learned a lot about context and still read above the unigram cross-entropy.

The floor measures that slack on the very test tokens and t draws of the model's bound. Its denoiser
is the Bayes posterior of the context-free data model p(x) = prod_i p_unigram(x_i): the clean-token
score f(v | x_t) = p_unigram(v) (smoothed training counts, the export's clean support), read
kernel-aware, p(v | x_t) ∝ p_unigram(v) q_t(x_t^i | v), with no change-aware correction (the exact
posterior of that data model, docs/likelihood.md §7.2). Scored with the same seed, it sees the same t and
x_t draws as the model, so the paired difference is precise:

* ``slack`` = floor - unigram cross-entropy of the same tokens: the bound's looseness at zero context
  (0 for ``mask``, whose bound is exact there: the floor is not computed for it);
* ``margin`` = floor - the model's bound, with its paired standard error over sequences: how much more
  than token frequencies the model has learned, as this kernel's bound can show it.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from pipeline.core.posterior import Reading

from .baselines import unigram_log_probs
from .standard_errors import paired_difference_stderr


class FrequencyDenoiser(torch.nn.Module):
    """``model(x_t, t) -> logits``: the same row, log p_unigram(v) (+ the clean-support bias), everywhere."""

    def __init__(self, counts: np.ndarray, clean_bias: torch.Tensor):
        super().__init__()
        log_p = torch.from_numpy(unigram_log_probs(counts)).float().to(clean_bias.device)
        self.row = torch.nn.Parameter(log_p + clean_bias.float(), requires_grad=False)

    def forward(self, xt: torch.Tensor, t: torch.Tensor | None = None, attention_mask=None) -> torch.Tensor:
        return self.row.expand(*xt.shape, -1)


def floor_applies(exported) -> bool:
    """A diffusion export whose kernel's bound is not exact for a context-free model (every one but mask)."""
    return exported.kind == "diffusion" and exported.kernel is not None and not exported.kernel.cfg.absorbing


def frequency_export(exported, counts: np.ndarray):
    """``exported`` with the frequency denoiser in place of its network, read as the exact posterior."""
    model = FrequencyDenoiser(counts, exported.model.clean_bias)
    reading = Reading(kernel_aware=True, log_ratio=0.0, mask_id=(exported.reading or Reading()).mask_id)
    return dataclasses.replace(exported, model=model, reading=reading)


def floor_comparison(ours: dict, floor: dict) -> dict:
    """results.json ``nelbo.unigram.frequency_floor``: the floor, its slack and the model's paired margin."""
    margin = floor["nats_per_token"] - ours["nats_per_token"]
    se = paired_difference_stderr(*floor["per_sequence"], *ours["per_sequence"])
    return {"bound": floor["bound"], "nats_per_token": floor["nats_per_token"], "stderr": floor["stderr"],
            "candidates": floor["candidates"],
            "slack": floor["nats_per_token"] - ours["unigram"]["nats_per_token"],
            "margin_nats": margin, "margin_stderr": se, "margin_stderrs": margin / se if se else None,
            "below_floor": margin > 0}
