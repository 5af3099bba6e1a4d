"""Test NELBO / perplexity of an export on the preprocessed test split (pipeline/core/likelihood.py bounds).

The bound is the objective's (``pipeline.core.objectives``, chosen by ``KernelConfig.likelihood_bound``):
``mask`` -> MDLM's continuous-time NELBO, ``uniform`` -> UDLM's continuous ELBO (both averaged over
``t_draws`` stratified t per sequence), every other kernel -> the T-step discrete bound with
``t_draws`` stratified steps of ``num_steps``; ``ar`` exports -> the exact next-token NLL (first
token of each sequence not scored: it is always [CLS]). [PAD] positions are
never counted. The export's weights are the EMA weights when exported from a run; the generator is
seeded, so the estimate is reproducible.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.core.likelihood import bits_per_token, perplexity
from pipeline.core.objectives import Objective, build_objective

SEQ_COLUMN = "tokens"


def read_test_sequences(split_dir: str | Path, max_sequences: int | None = None) -> torch.Tensor:
    """Up to ``max_sequences`` sequences of an MDS split, in order, as Long[N, L]."""
    from streaming import StreamingDataset

    split_dir = Path(split_dir)
    if not (split_dir / "index.json").is_file():
        raise FileNotFoundError(f"{split_dir}: not an MDS split directory (no index.json)")
    ds = StreamingDataset(local=str(split_dir), shuffle=False, batch_size=1, predownload=None)
    n = len(ds) if max_sequences is None else min(len(ds), max_sequences)
    rows = [np.asarray(ds[i][SEQ_COLUMN], dtype=np.int64) for i in range(n)]
    del ds
    if not rows:
        raise ValueError(f"{split_dir}: the split holds no sequences")
    return torch.from_numpy(np.stack(rows))


def _stratified_t(batch: int, draws: int, j: int, generator: torch.Generator) -> torch.Tensor:
    """The j-th of ``draws`` strata of U(0, 1), one t per sequence (low-variance t draws)."""
    u = torch.rand(batch, generator=generator, dtype=torch.float64)
    return ((j + u) / draws).clamp(1e-4, 1.0 - 1e-4)


@torch.no_grad()
def sequence_nelbo(objective: Objective, model, x0: torch.Tensor, real: torch.Tensor, t_draws: int,
                   num_steps: int, generator: torch.Generator) -> torch.Tensor:
    """Nats per sequence [B] of one batch: the objective's bound."""
    if objective.autoregressive or objective.kernel.cfg.likelihood_bound == "discrete":
        # the discrete bound spends its t_draws on stratified steps of num_steps (mc_steps)
        return objective.bound_nats(model, x0, real, generator=generator, num_steps=num_steps, mc_steps=t_draws)
    total = torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device)
    for j in range(t_draws):  # continuous-time bounds: t_draws stratified t per sequence
        t = _stratified_t(x0.shape[0], t_draws, j, generator).to(x0.device)
        total += objective.bound_nats(model, x0, real, t=t.float(), generator=generator)
    return total / t_draws


def evaluate_nelbo(exported, sequences: torch.Tensor, pad_id: int | None, batch_size: int = 16,
                   t_draws: int = 4, num_steps: int = 1000, seed: int = 0, progress: bool = True) -> dict:
    """Total NELBO over ``sequences`` and its per-token forms (nats, bits, perplexity)."""
    device = next(exported.model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    objective = build_objective(exported.kernel)
    bound = objective.bound_name(num_steps)
    total, tokens = 0.0, 0
    for start in tqdm(range(0, len(sequences), batch_size), desc="test NELBO", disable=not progress):
        x0 = sequences[start:start + batch_size].to(device)
        real = torch.ones_like(x0, dtype=torch.bool) if pad_id is None else x0 != pad_id
        nats = sequence_nelbo(objective, exported.model, x0, real, t_draws, num_steps, gen)
        total += float(nats.sum())
        tokens += int(objective.scored_tokens(real))
    per_token = total / tokens
    return {"bound": bound, "sequences": len(sequences), "tokens": tokens, "nelbo_nats": total,
            "nats_per_token": per_token, "bits_per_token": bits_per_token(total, tokens),
            "perplexity": perplexity(total, tokens), "t_draws": t_draws, "seed": seed,
            "num_steps": num_steps if bound and bound.startswith("discrete") else None}
