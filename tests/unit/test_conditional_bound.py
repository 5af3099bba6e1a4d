"""The bound with positions held clean (likelihood.continuous_bound_estimates(clean=...)), on an exact toy.

Under the absorbing (mask) kernel the continuous-time bound fed the exact conditionals p(x0^i | unmasked
tokens) equals the exact NLL (any-order AR identity), so with the context C held clean it must equal
-log p(x_Y | x_C) exactly, not -log p(x): the estimate over many t draws has to land on the conditional.
The toy: 3 positions over 4 tokens (+ [MASK]), a random joint distribution, enumerated.
"""
from __future__ import annotations

import itertools
import math

import torch

from pipeline.core.kernels import KernelConfig, build_kernel
from pipeline.core.likelihood import continuous_bound_estimates

V, MASK, L = 5, 4, 3  # tokens 0..3, [MASK] = 4
SEQS = torch.tensor(list(itertools.product(range(MASK), repeat=L)))  # [64, L]


def _joint(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(len(SEQS), generator=g, dtype=torch.float64) ** 3 + 1e-3
    return w / w.sum()


def exact_posterior_model(p: torch.Tensor):
    """model(x_t, t) -> logits [B, L, V]: log p(x0^i = v | the unmasked tokens of x_t), [MASK] excluded."""
    def model(xt: torch.Tensor, t) -> torch.Tensor:
        seen = xt != MASK  # [B, L]
        match = ((SEQS[None] == xt[:, None]) | ~seen[:, None]).all(-1)  # [B, S]: sequences consistent with x_t
        w = match.double() * p[None]  # [B, S]
        out = torch.full((xt.shape[0], L, V), -math.inf, dtype=torch.float64)
        for i in range(L):
            probs = torch.zeros(xt.shape[0], V, dtype=torch.float64).index_add_(1, SEQS[:, i], w)
            out[:, i] = (probs / probs.sum(-1, keepdim=True)).log()
        return out
    return model


def _estimate(kernel, model, x0: torch.Tensor, n: int, clean: torch.Tensor | None, scored: torch.Tensor) -> float:
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / n  # a stratified grid over (0, 1): E_t by midpoints
    x = x0.expand(n, L)
    out = continuous_bound_estimates(kernel, model, x, t.float(), scored.expand(n, L),
                                     generator=torch.Generator().manual_seed(0),
                                     clean=None if clean is None else clean.expand(n, L))
    (name, values), = [(k, v) for k, v in out.items() if not k.endswith("_uncorrected")]
    return float(values.double().mean())


def test_a_clean_context_gives_the_conditional_nll():
    kernel = build_kernel(KernelConfig.preset("mask"), V, mask_id=MASK)
    p = _joint()
    model = exact_posterior_model(p)
    for row in (5, 17, 42):
        x0 = SEQS[row]
        exact_joint = -math.log(float(p[row]))
        # the whole sequence: the exact NLL
        everything = torch.ones(L, dtype=torch.bool)
        assert abs(_estimate(kernel, model, x0, 40000, None, everything) - exact_joint) < 0.02 * exact_joint + 0.03
        # position 0 held clean, positions 1-2 scored: -log p(x_1, x_2 | x_0)
        context = torch.tensor([True, False, False])
        p_context = float(p[(SEQS[:, 0] == x0[0])].sum())
        exact_conditional = exact_joint + math.log(p_context)
        got = _estimate(kernel, model, x0, 40000, context, ~context)
        assert abs(got - exact_conditional) < 0.02 * exact_conditional + 0.03, (row, got, exact_conditional)
        if row != 5:  # rows whose context is informative: without holding it clean, another number
            loose = _estimate(kernel, model, x0, 40000, None, ~context)
            assert abs(loose - exact_conditional) > 0.4, (row, loose, exact_conditional)
