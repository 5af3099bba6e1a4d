"""Test NELBO / perplexity of an export on the preprocessed test split (pipeline/core/likelihood.py bounds).

The bounds are the objective's (``pipeline.core.objectives`` -> ``pipeline.core.likelihood.bound_estimates``).
Default ``bound="continuous"``: every continuous-time bound of the kernel (MDLM's NELBO for ``mask``,
the conditional-path ELBO for every other kernel, plus UDLM's closed form for ``uniform``), each
averaged over ``t_draws`` stratified t per sequence on a shared x_t; the report keeps the tightest
total and names it, with its standard errors (standard_errors.py: Monte Carlo, over sequences).
``bound="tstep"``: the T-step bound with ``t_draws`` stratified steps of ``num_steps``. ``ar`` exports:
the exact next-token NLL (first token of each sequence not scored: it is always [CLS]). [PAD] positions
are never counted. The export's weights are the EMA weights when exported from a run; the generator is
seeded, so the estimate is reproducible.
"""
from __future__ import annotations

import math

import torch
from tqdm import tqdm

from pipeline.common.mds_check import read_split_sequences
from pipeline.core.likelihood import bits_per_token, perplexity, tightest
from pipeline.core.objectives import Objective, build_objective
from pipeline.core.posterior import PLAIN
from pipeline.core.time_sampling import bound_times

from .baselines import learned_verdict, unigram_reference
from .standard_errors import collapsed_strata_variance, ratio_stderr

# the sequences of an MDS split: lives with the shard checks (research tools read splits too)
read_test_sequences = read_split_sequences


def _stratified_u(strata: torch.Tensor, j: int, generator: torch.Generator) -> torch.Tensor:
    """Draw j of each sequence: a uniform u in its stratum ``strata[:, j]`` of ``draws`` equal strata of U(0, 1)
    (mapped to t, with its importance weight, by ``bound_times``).

    Every sequence visits every stratum once (low variance), in its own random order, so each draw j
    on its own is an unbiased estimate of the total: the standard error over draws is then a fair
    (slightly conservative) error of their mean. With one fixed stratum per draw it would measure how
    the integrand differs between strata instead.
    """
    draws = strata.shape[1]
    u = torch.rand(strata.shape[0], generator=generator, dtype=torch.float64, device=strata.device)
    return (strata[:, j] + u) / draws


STDERR_WARNING = 0.10  # a report warns when the standard error exceeds this share of the bound


def stratified(objective: Objective, bound: str) -> bool:
    """Whether ``sequence_nelbo`` spends its t draws on strata (a continuous-time bound of a diffusion model)."""
    return not (objective.autoregressive or bound == "tstep")


def new_strata(batch: int, t_draws: int, generator: torch.Generator) -> torch.Tensor:
    """[batch, t_draws]: the stratum of each sequence's draw j, a random order of the strata per sequence."""
    return torch.rand(batch, t_draws, generator=generator, dtype=torch.float64, device=generator.device).argsort(-1)


@torch.no_grad()
def sequence_nelbo(objective: Objective, model, x0: torch.Tensor, real: torch.Tensor, t_draws: int,
                   num_steps: int, generator: torch.Generator, bound: str = "continuous",
                   t_sampling: str = "defensive", strata: torch.Tensor | None = None,
                   clean: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """{bound name: nats per sequence and t draw, [t_draws, B] (or [1, B])} of one batch; ``t_sampling``:
    how t is drawn for the continuous-time bounds (pipeline.core.time_sampling.bound_times); ``strata``
    (``new_strata``, drawn here when not given) says which stratum each draw of each sequence fell in."""
    if not stratified(objective, bound):
        # exact (AR), or the T-step bound spending its t_draws on stratified steps of num_steps
        out = objective.bound_estimates(model, x0, real, bound=bound, generator=generator, num_steps=num_steps,
                                        mc_steps=t_draws)
        return {name: value[None] for name, value in out.items()}
    draws: dict[str, list[torch.Tensor]] = {}
    if strata is None:
        strata = new_strata(x0.shape[0], t_draws, generator)
    for j in range(t_draws):  # continuous-time bounds: t_draws stratified t per sequence
        t, weight = bound_times(_stratified_u(strata, j, generator), t_sampling)
        for name, value in objective.bound_estimates(model, x0, real, t=t.float().to(x0.device), generator=generator,
                                                     t_weight=weight.to(x0.device), clean=clean).items():
            draws.setdefault(name, []).append(value)
    return {name: torch.stack(values) for name, values in draws.items()}


def evaluate_nelbo(exported, sequences: torch.Tensor, pad_id: int | None, batch_size: int = 16,
                   t_draws: int = 4, num_steps: int = 1000, seed: int = 0, progress: bool = True,
                   bound: str = "continuous", desc: str = "test NELBO", t_sampling: str = "defensive",
                   unigram_counts=None, prefix_lens: torch.Tensor | None = None) -> dict:
    """The tightest bound over ``sequences`` and its per-token forms (nats, bits, perplexity), with its
    standard errors (standard_errors.py) and every candidate bound's nats per token; given the training
    data's ``unigram_counts``, the unigram reference of the same tokens beside it (baselines.py).
    ``per_sequence``: (nats, scored tokens) of each sequence, tensors, for paired comparisons; not JSON.
    ``prefix_lens`` (Long[N]): the first positions of each sequence are a context, held clean and not scored,
    so each bound is of -log p(rest | context) (the AR baseline's NLL is exact and conditional anyway)."""
    device = next(exported.model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    objective = build_objective(exported.kernel, reading=exported.reading or PLAIN)
    per_draw: dict[str, torch.Tensor] = {}  # name -> [draws] total nats of each t draw
    per_sequence: dict[str, list[torch.Tensor]] = {}  # name -> [B, draws] per batch, draws in stratum order
    tokens_per_sequence = []
    for start in tqdm(range(0, len(sequences), batch_size), desc=desc, disable=not progress):
        x0 = sequences[start:start + batch_size].to(device)
        real = torch.ones_like(x0, dtype=torch.bool) if pad_id is None else x0 != pad_id
        clean = None
        if prefix_lens is not None:
            clean = torch.arange(x0.shape[1], device=device) < prefix_lens[start:start + batch_size, None].to(device)
            real = real & ~clean
            clean = None if objective.autoregressive else clean
        strata = new_strata(x0.shape[0], t_draws, gen) if stratified(objective, bound) else None
        for name, nats in sequence_nelbo(objective, exported.model, x0, real, t_draws, num_steps, gen,
                                         bound, t_sampling, strata, clean).items():
            nats = nats.to(torch.float64).cpu()
            per_draw[name] = per_draw.get(name, 0.0) + nats.sum(-1)
            by_stratum = nats.T if strata is None else torch.empty_like(nats.T).scatter_(1, strata.cpu(), nats.T)
            per_sequence.setdefault(name, []).append(by_stratum)
        tokens_per_sequence.append(_scored(objective, real).sum(-1).cpu())
    token_counts = torch.cat(tokens_per_sequence)
    tokens = int(token_counts.sum())
    totals = {name: float(draws.mean()) for name, draws in per_draw.items()}
    name, total = tightest(totals)
    draws, y = per_draw[name], torch.cat(per_sequence[name])
    iid = float(draws.std() / math.sqrt(len(draws))) / tokens if len(draws) > 1 else None
    collapsed = stratified(objective, bound) and t_draws > 1  # one draw per stratum: pair adjacent strata
    stderr = math.sqrt(float(collapsed_strata_variance(y).sum())) / tokens if collapsed else iid
    warning = None
    if stderr is not None and stderr > STDERR_WARNING * abs(total / tokens):
        warning = (f"the standard error ({stderr:.3g} nats/token) exceeds {STDERR_WARNING:.0%} of the bound "
                   f"({total / tokens:.4g}): more t draws or sequences, and look at the t-profile "
                   "(python -m pipeline.t_profile)")
    sequence_nats = y.mean(-1)
    result = {"stderr_warning": warning, "bound": name, "sequences": len(sequences), "tokens": tokens,
              "nelbo_nats": total,
              "nats_per_token": total / tokens, "stderr": stderr,
              "stderr_method": "collapsed strata" if collapsed else "draws",
              "stderr_iid_draws": iid, "stderr_sequences": ratio_stderr(sequence_nats, token_counts),
              "bits_per_token": bits_per_token(total, tokens),
              "perplexity": perplexity(total, tokens), "t_draws": t_draws, "seed": seed, "t_sampling": t_sampling,
              "num_steps": num_steps if name.startswith("discrete") else None,
              "candidates": {n: v / tokens for n, v in sorted(totals.items())}}
    if unigram_counts is not None:
        real = torch.ones_like(sequences, dtype=torch.bool) if pad_id is None else sequences != pad_id
        reference, unigram_nats = unigram_reference(unigram_counts, sequences, _scored(objective, real))
        paired = ratio_stderr(unigram_nats - sequence_nats, token_counts)
        result["unigram"] = {**reference, **learned_verdict(total / tokens, paired, reference)}
    result["per_sequence"] = (sequence_nats, token_counts)  # in memory only (a baseline's paired difference)
    return result


def _scored(objective: Objective, real: torch.Tensor) -> torch.Tensor:
    """[B, L] which tokens the objective's bound scores (every real one; the AR bound never scores the first)."""
    scored = real.clone()
    if objective.autoregressive:
        scored[:, 0] = False
    return scored
