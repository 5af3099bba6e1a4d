"""How close does a sampler get to the data with a perfect denoiser? A toy with an exact posterior.

    python -m pipeline.sampler_oracle --kernel semdlm_plus --methods ctmc,blockwise,tau_leaping \\
        --steps 8,32,128 [--samples 20000 --seed 0 --corrector-steps 1]

The toy: sequences of ``--length`` tokens over a ``--vocab``-token vocabulary (token 0 is [MASK] and
never data), a random table of ``--k-max`` neighbours per token (pipeline.research.bound_check's
toy kernel), and a random distribution over the valid sequences with strong dependence between the
positions. The denoiser is the exact posterior marginal p(x0^i | x_t) ∝ sum over sequences of
p_data(x0) prod_j q_t(x_t^j | x0^j), so the only error left is the sampler's. Each method draws
``--samples`` sequences (one block, penalty off, no truncation) through the production
``pipeline.sampling.generate.generate``; printed: the total-variation distance between the samples'
histogram and p_data per method x steps, the network calls per sequence, and the noise floor (the
TV of as many exact draws from p_data, mean of 5). Last line:
``ctmc_tv=<TV at the largest steps> blockwise_tv=<...> floor=<...>`` (methods that were run).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from pipeline.common.errors import library_not_a_command
from pipeline.core.objectives import LossConfig
from pipeline.core.posterior import Reading
from pipeline.research.bound_check import build_toy, eq120_denoiser
from pipeline.sampling.base import SamplerConfig
from pipeline.sampling.generate import generate


@dataclass
class SequenceToy:
    kernel: object
    states: torch.Tensor  # [S, L] the valid sequences
    p_data: torch.Tensor  # [S] float64

    @property
    def length(self) -> int:
        return self.states.shape[1]

    def __call__(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Exact posterior marginals as logits [B, L, V] (log p(x0^i = v | x_t); -inf where impossible)."""
        V, L = self.kernel.vocab_size, self.length
        lik = self.kernel.likelihood_of(xt, t.to(torch.float64))  # [B, L, V]: q_t(x_t^i | v)
        log_lik = lik.clamp_min(1e-300).log() + torch.where(lik > 0, 0.0, -math.inf)
        joint = self.p_data.log() + sum(log_lik[:, i, self.states[:, i]] for i in range(L))  # [B, S]
        post = torch.softmax(joint, -1)
        marg = torch.zeros(xt.shape[0], L, V, dtype=torch.float64)
        for i in range(L):
            marg[:, i].index_add_(1, self.states[:, i], post)
        return marg.clamp_min(1e-300).log().masked_fill(marg <= 0, -math.inf).float()

    def clean_scores(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The kernel-aware parameterisation's exact f as logits [B, L, V]: log p(x0^i = v | x_t^{-i}), i.e.
        the posterior marginal without position i's own likelihood (pipeline/core/posterior.py)."""
        V, L = self.kernel.vocab_size, self.length
        lik = self.kernel.likelihood_of(xt, t.to(torch.float64))
        log_lik = lik.clamp_min(1e-300).log() + torch.where(lik > 0, 0.0, -math.inf)
        terms = [log_lik[:, i, self.states[:, i]] for i in range(L)]  # [B, S] each
        marg = torch.zeros(xt.shape[0], L, V, dtype=torch.float64)
        for i in range(L):
            joint = self.p_data.log() + sum(terms[j] for j in range(L) if j != i)
            marg[:, i].index_add_(1, self.states[:, i], torch.softmax(joint, -1))
        return marg.clamp_min(1e-300).log().masked_fill(marg <= 0, -math.inf).float()

    def index_of(self, seqs: torch.Tensor) -> torch.Tensor:
        """Each sequence's row in ``states`` (-1 if it is not a valid sequence)."""
        V = self.kernel.vocab_size
        powers = V ** torch.arange(self.length - 1, -1, -1)
        lookup = torch.full((V ** self.length,), -1, dtype=torch.long)
        lookup[(self.states * powers).sum(-1)] = torch.arange(self.states.shape[0])
        return lookup[(seqs * powers).sum(-1)]

    def tv(self, seqs: torch.Tensor) -> float:
        idx = self.index_of(seqs)
        counts = torch.bincount(idx[idx >= 0], minlength=self.states.shape[0]).to(torch.float64)
        outside = float((idx < 0).sum())
        return 0.5 * (float((counts / seqs.shape[0] - self.p_data).abs().sum()) + outside / seqs.shape[0])

    def noise_floor(self, n: int, seed: int, repeats: int = 5) -> float:
        g = torch.Generator().manual_seed(seed + 7)
        tvs = [self.tv(self.states[torch.multinomial(self.p_data, n, replacement=True, generator=g)])
               for _ in range(repeats)]
        return sum(tvs) / repeats


def build_sequence_toy(kernel: str = "semdlm_plus", vocab: int = 6, k_max: int = 2, length: int = 3,
                       seed: int = 0, temperature: float = 1.5) -> SequenceToy:
    """Every sequence of valid tokens (1..vocab-1) with probability ∝ exp(temperature * N(0, 1))."""
    base = build_toy(kernel, vocab=vocab, k_max=k_max, valid=vocab - 1, seed=seed)
    states = torch.tensor(list(itertools.product(range(1, vocab), repeat=length)), dtype=torch.long)
    g = torch.Generator().manual_seed(seed + 1)
    p = torch.softmax(temperature * torch.randn(states.shape[0], generator=g, dtype=torch.float64), 0)
    return SequenceToy(base.kernel, states, p)


class ReadDenoiser:
    """A toy denoiser with the reading its output needs (what ``model.posterior_reading`` is for an export)."""

    def __init__(self, fn, reading: Reading):
        self.fn, self.posterior_reading = fn, reading

    def __call__(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.fn(xt, t)


def toy_denoiser(toy: SequenceToy, which: str = "posterior", parameterization: str = "kernel",
                 loss_cfg: LossConfig | None = None) -> ReadDenoiser:
    """The exact posterior, Eq 120's exact optimum (``tilted``, read as it is) or the same logits read with the
    change-aware correction (``corrected``), as f (``kernel``) or as the posterior's logits (``direct``)."""
    kernel_aware = parameterization == "kernel"
    return ReadDenoiser(*eq120_denoiser(toy.clean_scores if kernel_aware else toy, which, kernel_aware, loss_cfg))


def oracle_tv(toy: SequenceToy, method: str, steps: int, samples: int, seed: int = 0, batch: int = 4096,
              model=None, **overrides) -> tuple[float, float]:
    """(TV of ``samples`` draws of ``method`` at ``steps`` to p_data, network calls per sequence); ``model``:
    the denoiser (default the exact posterior marginals, read as they are)."""
    cfg = SamplerConfig(method=method, steps=steps, seq_len=toy.length, strides=1, **overrides)
    g = torch.Generator().manual_seed(seed)
    out, calls = [], 0
    for lo in range(0, samples, batch):
        ids, den = generate(model or toy, toy.kernel, cfg, min(batch, samples - lo), g)
        out.append(ids)
        calls = den.calls
    return toy.tv(torch.cat(out)), float(calls)


if __name__ == "__main__":  # the command is python -m pipeline.sampler_oracle; this module is its library
    raise SystemExit(library_not_a_command(__spec__.name, "pipeline.sampler_oracle"))
