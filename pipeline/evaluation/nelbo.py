"""Test NELBO / perplexity of an export on the preprocessed test split (pipeline/core/likelihood.py bounds).

Bound per kernel: ``mask`` -> MDLM's continuous-time NELBO, ``uniform`` -> UDLM's continuous ELBO
(both averaged over ``t_draws`` stratified t per sequence), every other kernel -> the T-step
discrete bound with ``t_draws`` stratified steps of ``num_steps``; ``ar`` exports -> the exact
next-token NLL (first token of each sequence not scored: it is always [CLS]). [PAD] positions are
never counted. The export's weights are the EMA weights when exported from a run; the generator is
seeded, so the estimate is reproducible.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.core.likelihood import bits_per_token, discrete_nelbo, mdlm_nelbo, perplexity, udlm_nelbo

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
def sequence_nelbo(exported, x0: torch.Tensor, real: torch.Tensor, t_draws: int, num_steps: int,
                   generator: torch.Generator) -> tuple[torch.Tensor, str]:
    """(nats per sequence [B], name of the bound) for one batch."""
    model, kernel = exported.model, exported.kernel
    if exported.kind == "ar":
        logits = model(x0, real)
        logp = torch.log_softmax(logits.to(torch.float64)[:, :-1], -1)
        nll = -logp.gather(-1, x0[:, 1:].unsqueeze(-1)).squeeze(-1)
        return (nll * real[:, 1:]).sum(-1), "ar_exact_nll"
    name = kernel.cfg.name
    if name in ("mask", "uniform"):
        bound = mdlm_nelbo if name == "mask" else udlm_nelbo
        total = torch.zeros(x0.shape[0], dtype=torch.float64, device=x0.device)
        for j in range(t_draws):
            t = _stratified_t(x0.shape[0], t_draws, j, generator).to(x0.device)
            total += bound(kernel, model, x0, t.float(), mask=real, generator=generator)
        return total / t_draws, "mdlm_continuous" if name == "mask" else "udlm_continuous"
    out = discrete_nelbo(kernel, model, x0, num_steps=num_steps, mask=real, mc_steps=t_draws, generator=generator)
    return out["nelbo"], f"discrete_T{num_steps}"


def evaluate_nelbo(exported, sequences: torch.Tensor, pad_id: int | None, batch_size: int = 16,
                   t_draws: int = 4, num_steps: int = 1000, seed: int = 0, progress: bool = True) -> dict:
    """Total NELBO over ``sequences`` and its per-token forms (nats, bits, perplexity)."""
    device = next(exported.model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    total, tokens, bound = 0.0, 0, None
    for start in tqdm(range(0, len(sequences), batch_size), desc="test NELBO", disable=not progress):
        x0 = sequences[start:start + batch_size].to(device)
        real = torch.ones_like(x0, dtype=torch.bool) if pad_id is None else x0 != pad_id
        nats, bound = sequence_nelbo(exported, x0, real, t_draws, num_steps, gen)
        total += float(nats.sum())
        tokens += int(real[:, 1:].sum()) if exported.kind == "ar" else int(real.sum())
    per_token = total / tokens
    return {"bound": bound, "sequences": len(sequences), "tokens": tokens, "nelbo_nats": total,
            "nats_per_token": per_token, "bits_per_token": bits_per_token(total, tokens),
            "perplexity": perplexity(total, tokens), "t_draws": t_draws, "seed": seed,
            "num_steps": num_steps if bound and bound.startswith("discrete") else None}
