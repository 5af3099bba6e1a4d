"""Likelihood bounds: posterior consistency, bound >= exact NLL by enumeration, agreement with MDLM/UDLM."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.core.kernels import KernelConfig, build_kernel
from pipeline.core.likelihood import (
    bits_per_token,
    continuous_bound_estimates,
    discrete_nelbo,
    mdlm_integrand,
    perplexity,
    prior_kl,
    reverse_step,
    reverse_step_probs,
    step_kl,
    udlm_integrand,
)

from neighbor_tables import make_test_kernel, random_tables

V, K, L, MASK = 5, 3, 3, 0
PRESETS = ["mask", "uniform", "semdlm", "semdlm_softmax", "semdlm_plus", "semdlm_plus_eq118"]


def tables(seed=0):
    return random_tables(V, K, MASK, seed)


def make_kernel(preset, **overrides):
    overrides.setdefault("k_max", K if preset != "semdlm_plus" else K + 1)
    return make_test_kernel(preset, V, MASK, tables(), **overrides)


class TinyDenoiser:
    """A fixed small random network (context mixing + time input): logits [B, L, V] from (xt, t)."""

    def __init__(self, vocab=V, length=L, dim=8, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.emb, self.pos = torch.randn(vocab, dim, generator=g), torch.randn(length, dim, generator=g)
        self.time, self.out = torch.randn(dim, generator=g), 1.5 * torch.randn(dim, vocab, generator=g)

    def __call__(self, xt, t):
        h = self.emb[xt] + self.pos[: xt.shape[1]]
        h = h + h.mean(1, keepdim=True) + t.float().view(-1, 1, 1) * self.time
        return torch.tanh(h) @ self.out


def all_sequences(vocab=V, length=L):
    return torch.cartesian_prod(*[torch.arange(vocab)] * length).reshape(-1, length)


def seq_probs(rows_per_position, states):
    """prod_l rows[l, states[:, l]] for per-position distributions rows [L, V] -> [S]."""
    return torch.stack([rows_per_position[l, states[:, l]] for l in range(states.shape[1])]).prod(0)


@pytest.mark.parametrize("preset", PRESETS)
def test_reverse_posterior_is_normalised_and_keeps_the_marginals(preset):
    kernel = make_kernel(preset)
    z = torch.arange(V)
    for s, t in [(0.0, 0.2), (0.3, 0.5), (0.61, 0.62), (0.8, 1.0)]:
        q_s, q_t = kernel.marginal_rows(torch.arange(V), s), kernel.marginal_rows(torch.arange(V), t)
        for v in range(V):
            post = reverse_step_probs(kernel, z, torch.nn.functional.one_hot(torch.full((V,), v), V), s, t)
            seen = q_t[v] > 0
            assert torch.allclose(post[seen].sum(-1), torch.ones(int(seen.sum()), dtype=torch.float64))
            # sum_z q_t(z|v) q(x_s|z, v) = q_s(.|v): the backward chain reproduces every forward marginal
            assert torch.allclose((q_t[v][:, None] * post).sum(0), q_s[v], atol=1e-12)


def exact_nll(kernel, model, grid, x0_rows):
    """-log p(x0) of the generative process pi -> p(x_{t_{T-1}}|x_{t_T}) -> ... -> p(x0|x_{t_1}), enumerated."""
    states = all_sequences()
    dist = seq_probs(kernel.prior_probs().expand(L, V), states)
    for s, t in reversed(list(zip(grid[:-1], grid[1:]))):
        step = reverse_step(kernel, model(states, torch.full((len(states),), t)), states, s, t)  # [S, L, V]
        trans = torch.stack([step[:, l, states[:, l]] for l in range(L)]).prod(0)  # [S_from, S_to]
        assert torch.allclose(trans.sum(-1), torch.ones(len(states), dtype=torch.float64))
        dist = dist @ trans
    assert math.isclose(dist.sum().item(), 1.0, rel_tol=1e-9)
    index = (x0_rows[:, None, :] == states[None]).all(-1).float().argmax(-1)
    return -dist[index].log()


def exact_bound(kernel, model, grid, x0):
    """The discrete bound with every expectation over x_t enumerated instead of sampled."""
    states = all_sequences()
    total = prior_kl(kernel, x0[None])[0]
    for s, t in zip(grid[:-1], grid[1:]):
        q_xt = seq_probs(kernel.marginal_rows(x0, t), states)
        kl = step_kl(kernel, model, x0.expand(len(states), L), states, s, t)
        total = total + (q_xt * kl).sum()
    return total


@pytest.mark.parametrize("preset", PRESETS)
def test_bound_is_above_the_exact_nll_of_the_generative_process(preset):
    kernel, model = make_kernel(preset), TinyDenoiser()
    grid = [0.0, 0.3, 0.7, 1.0]
    x0s = torch.tensor([[1, 3, 2], [4, 4, 1], [2, 1, 3]])
    nll = exact_nll(kernel, model, grid, x0s)
    for x0, exact in zip(x0s, nll):
        bound = exact_bound(kernel, model, grid, x0)
        assert bound >= exact - 1e-9, (preset, bound.item(), exact.item())
        assert bound < exact + 20  # a bound, not a vacuous number


def test_monte_carlo_estimator_is_unbiased_for_the_exact_bound():
    kernel, model = make_kernel("semdlm_plus"), TinyDenoiser()
    x0 = torch.tensor([1, 3, 2])
    grid = [i / 4 for i in range(5)]
    exact = exact_bound(kernel, model, grid, x0).item()
    est = discrete_nelbo(kernel, model, x0.expand(3000, L), num_steps=4, mc_steps=None,
                         generator=torch.Generator().manual_seed(0))
    assert abs(est["nelbo"].mean().item() - exact) < 0.03 * exact
    assert torch.equal(est["num_tokens"], torch.full((3000,), L))


def mask_patterns(x0):
    """All 2^L maskings of x0 with their masked-set indicator."""
    pats = all_sequences(2, L).bool()
    return torch.where(pats, torch.full_like(x0, MASK), x0), pats


def test_mask_bound_agrees_with_mdlm_nelbo_at_T_1000():
    kernel = make_kernel("mask", alpha_schedule="cosine")  # not the trivial loglinear case
    model, x0 = TinyDenoiser(), torch.tensor([1, 3, 2])
    xts, pats = mask_patterns(x0)

    def pattern_probs(t):
        a = float(kernel.alpha(t))
        return torch.where(pats, 1 - a, a).prod(-1).double()

    nodes, weights = np.polynomial.legendre.leggauss(64)  # smooth integrand: Gauss-Legendre on [0, 1]
    continuous = 0.0
    for node, w in zip((nodes + 1) / 2, weights / 2):
        t = torch.full((len(xts),), float(node))
        continuous += w * (pattern_probs(float(node)) * mdlm_integrand(kernel, model(xts, t), x0.expand_as(xts),
                                                                        xts, t)).sum().item()
    T, discrete = 1000, prior_kl(kernel, x0[None])[0].item()
    for i in range(1, T + 1):
        s, t = (i - 1) / T, i / T
        discrete += (pattern_probs(t) * step_kl(kernel, model, x0.expand_as(xts), xts, s, t)).sum().item()
    assert abs(discrete - continuous) < 0.01 * continuous, (discrete, continuous)
    # the one-sample estimator averages to the same value
    n = 4000
    t = (torch.arange(n) + 0.5) / n
    est = continuous_bound_estimates(kernel, model, x0.expand(n, L), t, generator=torch.Generator().manual_seed(1))
    assert set(est) == {"mdlm_continuous"}
    mc = est["mdlm_continuous"].mean().item()
    assert abs(mc - continuous) < 0.05 * continuous


def test_udlm_closed_form_matches_the_discrete_markov_bound():
    """UDLM's continuous ELBO vs the T = 1000 D3PM bound of the (Markov) uniform chain, both exact."""
    vocab, length = 4, 2
    kernel = build_kernel(KernelConfig.preset("uniform"), vocab)
    states = all_sequences(vocab, length)
    g = torch.Generator().manual_seed(3)
    p_data = torch.rand(len(states), generator=g, dtype=torch.float64)
    p_data /= p_data.sum()

    def true_posterior(xt, t):  # a denoiser that is exact for p_data, so both bounds are finite
        lik = kernel.likelihood_of(xt, t[:1])  # [B, L, V]: q_t(xt^l | v)
        w = p_data * torch.stack([lik[:, l, states[:, l]] for l in range(length)]).prod(0)  # [B, S]
        w = w / w.sum(-1, keepdim=True)
        onehots = torch.nn.functional.one_hot(states, vocab).double()  # [S, L, V]
        return torch.einsum("bs,slv->blv", w, onehots).clamp_min(1e-300).log()

    x0 = torch.tensor([2, 0])
    q_rows = lambda t: kernel.marginal_rows(x0, t)  # noqa: E731
    nodes, weights = np.polynomial.legendre.leggauss(64)
    continuous = 0.0
    for node, w in zip((nodes + 1) / 2, weights / 2):
        t = torch.full((len(states),), float(node), dtype=torch.float64)
        a = kernel.alpha(t)
        integrand = udlm_integrand(true_posterior(states, t), x0.expand_as(states), states, a, -torch.ones_like(a))
        continuous += w * (seq_probs(q_rows(float(node)), states) * integrand.sum(-1)).sum().item()

    def markov_posterior(s, t, x0_probs):  # q(x_s = y | x_t = z, x0 ~ x0_probs) of the uniform chain, [N, z, y]
        a_s, a_t = float(kernel.alpha(s)), float(kernel.alpha(t))
        step = (a_t / a_s) * torch.eye(vocab, dtype=torch.float64) + (1 - a_t / a_s) / vocab  # [y, z]
        q_s = x0_probs @ kernel.marginal_rows(torch.arange(vocab), s)  # [N, y]
        joint = q_s[:, :, None] * step[None]  # [N, y, z]
        return (joint / joint.sum(1, keepdim=True)).transpose(1, 2)

    # UDLM's generative step plugs the predicted distribution into the posterior (as in D3PM/UDLM):
    # p(x_s | x_t) = q(x_s | x_t, x0 = p_theta), not a mixture of posteriors.
    T, discrete = 1000, 0.0
    onehot = torch.nn.functional.one_hot(x0, vocab).double()
    for i in range(1, T + 1):
        s, t = (i - 1) / T, i / T
        p0 = true_posterior(states, torch.full((len(states),), t, dtype=torch.float64)).exp()  # [S, L, V]
        kl = torch.zeros(len(states), dtype=torch.float64)
        rows = torch.arange(len(states))
        for l in range(length):
            q = markov_posterior(s, t, onehot[l:l + 1])[0, states[:, l]]  # [S, y]
            p = markov_posterior(s, t, p0[:, l])[rows, states[:, l]]  # [S, y]
            kl += torch.where(q > 0, q * (q.clamp_min(1e-300).log() - p.clamp_min(1e-300).log()), 0.0).sum(-1)
        discrete += (seq_probs(q_rows(t), states) * kl).sum().item()
    assert abs(discrete - continuous) < 0.01 * continuous, (discrete, continuous)


def test_bits_per_token_and_perplexity():
    nats = torch.tensor([3 * math.log(2) * 10, 3 * math.log(2) * 30], dtype=torch.float64)
    assert math.isclose(bits_per_token(nats, 40), 3.0)
    assert math.isclose(perplexity(nats, 40), 8.0)
