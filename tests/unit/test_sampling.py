"""Samplers: float64 draws, truncation, Eq 23 penalty, Eq 121 blockwise, MDLM / ReMDM / schedules, tau-leaping."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from pipeline.common.neighbor_artifact import semantic_association_rows
from pipeline.core.kernels import KernelConfig, build_kernel
from pipeline.core.model import DiffusionTransformer, ModelConfig
from pipeline.evaluation.diversity import repetition_rate
from pipeline.sampling import PenaltyConfig, SamplerConfig, association_by_columns, generate
from pipeline.sampling.blockwise import replacement_probability
from pipeline.sampling.draws import categorical, truncate
from pipeline.sampling.penalty import apply_semantic_frequency_penalty

V, MASK = 64, 63


def tiny_model(time_conditioning=True, bias_tokens=None, seed=0):
    torch.manual_seed(seed)
    model = DiffusionTransformer(ModelConfig.preset("tiny", time_conditioning=time_conditioning)).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.head.weight, std=0.3)
        if bias_tokens is not None:  # a model that loves a few tokens: heavy repetition without penalty
            model.head.bias[bias_tokens] = 4.0
    return model


def tables(k=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(V, 16, generator=g), dim=-1)
    sims = emb @ emb.T
    sims.fill_diagonal_(-2.0)
    sims[:, MASK] = -2.0  # [MASK] is never a neighbour
    vals, nb = sims.topk(k, dim=-1)
    valid = torch.ones(V, dtype=torch.bool)
    valid[MASK] = False
    return nb, vals, valid


def semantic_kernel():
    nb, vals, valid = tables()
    return build_kernel(KernelConfig.preset("semdlm_plus", k_max=8), V, mask_id=MASK, neighbors=nb,
                        valid_vocab=valid, similarities=vals)


def mask_kernel():
    return build_kernel(KernelConfig.preset("mask"), V, mask_id=MASK)


# --------------------------------------------------------------------------- draws
def test_categorical_float64_matches_probabilities_and_skips_zeros():
    probs = torch.tensor([0.5, 0.0, 0.3, 0.0, 0.2], dtype=torch.float64).expand(20000, 5)
    draws = categorical(probs, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=5).double() / draws.numel()
    assert freq[1] == 0 and freq[3] == 0
    assert torch.allclose(freq, probs[0], atol=0.015)


def test_truncate_top_k_and_top_p():
    p = torch.tensor([[0.4, 0.3, 0.2, 0.1]], dtype=torch.float64)
    assert torch.allclose(truncate(p, top_k=2), torch.tensor([[4 / 7, 3 / 7, 0, 0]], dtype=torch.float64))
    # top-p 0.6: 0.4 alone is below 0.6, 0.4 + 0.3 reaches it -> two tokens kept
    assert torch.allclose(truncate(p, top_p=0.6), torch.tensor([[4 / 7, 3 / 7, 0, 0]], dtype=torch.float64))
    assert torch.allclose(truncate(p, top_p=0.3), torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64))
    with pytest.raises(ValueError):
        truncate(p, top_p=0.0)


# --------------------------------------------------------------------------- penalty (Eq 23 / 114 / 115)
@pytest.mark.parametrize("side", ["left", "both"])
def test_penalty_matches_dense_definition(side):
    nb, vals, _ = tables(k=4)
    # row form as the neighbour artifact stores it: S+(k, idx[k, j]) = w[k, j] (diagonal first)
    idx = torch.cat([torch.arange(V)[:, None], nb], 1)
    w = torch.cat([torch.ones(V, 1), vals.clamp_min(0)], 1)
    assoc = association_by_columns(idx, w)
    S = torch.zeros(V, V)  # dense S+(k, l)
    for k in range(V):
        S[k, idx[k]] = w[k]
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 6, (2, 12), generator=g)  # few distinct tokens: many repeats in a window
    x[0, 3] = MASK
    logits = torch.randn(2, 12, V, generator=g)
    cfg = PenaltyConfig(lambda_freq=0.7, lambda_sem=1.3, window=3, window_side=side)
    got = apply_semantic_frequency_penalty(logits, x, cfg, assoc, ignore_id=MASK)
    want = logits.clone()
    for b in range(2):
        for i in range(12):
            n = torch.zeros(V)
            for r in range(max(0, i - 3), min(12, i + 4) if side == "both" else i):
                if r != i and x[b, r] != MASK:
                    n[x[b, r]] += 1
            m = S @ n  # Eq 114
            want[b, i] -= 0.7 * torch.log1p(n) + 1.3 * torch.log1p(m)  # Eq 115
    assert torch.allclose(got, want, atol=1e-5)
    # offset: logits of positions 5.. only
    part = apply_semantic_frequency_penalty(logits[:, 5:], x, cfg, assoc, start=5, ignore_id=MASK)
    assert torch.allclose(part, want[:, 5:], atol=1e-5)


def test_penalty_reduces_repeated_tokens():
    model, kernel = tiny_model(bias_tokens=[1, 2, 3]), semantic_kernel()
    nb, vals, _ = tables()
    assoc = association_by_columns(*semantic_association_rows(nb.numpy(), vals.numpy(), nb.shape[1]))
    rates = {}
    for lam in (0.0, 3.0):
        cfg = SamplerConfig(method="blockwise", steps=8, seq_len=32, strides=2,
                            penalty=PenaltyConfig(lambda_freq=lam, lambda_sem=lam / 2, window=8))
        ids, _ = generate(model, kernel, cfg, 8, torch.Generator().manual_seed(0), assoc)
        rates[lam] = repetition_rate(ids.tolist(), window=8)
    assert rates[0.0] > 0.3, rates  # the biased model repeats a lot without the penalty
    assert rates[3.0] < rates[0.0] - 0.1, rates


# --------------------------------------------------------------------------- blockwise (Eq 121)
def test_replacement_probability_eq121():
    conf = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    got = replacement_probability(0.8, 0.6, conf, rho=2.0)
    assert torch.allclose(got, 0.25 * (1 - conf) ** 2)
    assert torch.equal(replacement_probability(0.0, 0.0, conf, 1.0), torch.zeros(3, dtype=torch.float64))


class Recorder(torch.nn.Module):
    """Wraps a model and records the inputs of every call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.cfg, self.inputs = model, model.cfg, []

    def forward(self, x, t):
        self.inputs.append(x.clone())
        return self.model(x, t)


@pytest.mark.parametrize("method", ["blockwise", "tau_leaping"])
def test_samples_valid_and_blocks_respected(method):
    model, kernel = Recorder(tiny_model()), semantic_kernel()
    cfg = SamplerConfig(method=method, steps=6, seq_len=16, strides=2, top_p=0.95, freeze_threshold=0.9,
                        corrector_steps=1)
    ids, den = generate(model, kernel, cfg, 3, torch.Generator().manual_seed(0))
    assert ids.shape == (3, 16) and ids.dtype == torch.long
    assert ((ids >= 0) & (ids < V) & (ids != MASK)).all()
    lengths = [x.shape[1] for x in model.inputs]
    calls_per_block = len(lengths) // 2
    assert lengths == [8] * calls_per_block + [16] * calls_per_block  # block 1 alone, then block 2 after it
    for x in model.inputs[calls_per_block:]:  # the first block is frozen context while block 2 is denoised
        assert torch.equal(x[:, :8], ids[:, :8])


def test_same_seed_same_samples_other_seed_differs():
    model, kernel = tiny_model(), semantic_kernel()
    cfg = SamplerConfig(method="blockwise", steps=4, seq_len=16, strides=2)
    a, _ = generate(model, kernel, cfg, 2, torch.Generator().manual_seed(5))
    b, _ = generate(model, kernel, cfg, 2, torch.Generator().manual_seed(5))
    c, _ = generate(model, kernel, cfg, 2, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


# --------------------------------------------------------------------------- mask kernel samplers
@pytest.mark.parametrize("extra", [{}, {"remask": "remdm_cap", "remask_eta": 0.1}, {"method": "tau_leaping"}])
def test_mask_samplers_unmask_everything(extra):
    cfg = SamplerConfig(**{"method": "mdlm", "steps": 8, "seq_len": 16, "strides": 2, **extra})
    ids, _ = generate(tiny_model(), mask_kernel(), cfg, 3, torch.Generator().manual_seed(0))
    assert ((ids >= 0) & (ids < V) & (ids != MASK)).all()


def test_mdlm_cache_skips_network_when_nothing_changed():
    model = tiny_model(time_conditioning=False)
    steps = 64  # >> block length: most steps reveal nothing
    cached = SamplerConfig(method="mdlm", steps=steps, seq_len=8, strides=1)
    ids_c, den_c = generate(model, mask_kernel(), cached, 1, torch.Generator().manual_seed(0))
    uncached = SamplerConfig(method="mdlm", steps=steps, seq_len=8, strides=1, cache=False)
    ids_u, den_u = generate(model, mask_kernel(), uncached, 1, torch.Generator().manual_seed(0))
    assert den_u.calls == steps and den_c.calls < steps / 2
    assert torch.equal(ids_c, ids_u)  # a t-independent model: caching changes nothing but the cost


@pytest.mark.parametrize("extra", [{}, {"remask": "remdm_cap", "remask_eta": 0.05},
                                   {"penalty": PenaltyConfig(lambda_freq=1.0, window=4)}])
def test_mdlm_cache_is_exact_row_by_row(extra):
    """Several rows, two blocks: the cache sends only the rows that changed through the network and
    draws exactly the ids of the uncached run (the same seed)."""
    cfg = SamplerConfig(**{"method": "mdlm", "steps": 96, "seq_len": 16, "strides": 2, **extra})
    cached, uncached = Recorder(tiny_model(time_conditioning=False)), Recorder(tiny_model(time_conditioning=False))
    ids_c, den_c = generate(cached, mask_kernel(), cfg, 3, torch.Generator().manual_seed(1))
    ids_u, den_u = generate(uncached, mask_kernel(), replace(cfg, cache=False), 3, torch.Generator().manual_seed(1))
    assert torch.equal(ids_c, ids_u)
    assert den_u.calls == 96 and den_c.calls < 96
    assert any(x.shape[0] < 3 for x in cached.inputs)  # some calls re-evaluated a subset of the rows


def test_randomized_schedule_sizes_sum_and_vary():
    model, kernel = tiny_model(), mask_kernel()
    seen = set()
    for seed in range(4):
        cfg = SamplerConfig(method="mdlm", schedule="tc", steps=6, seq_len=24, strides=2)
        ids, den = generate(model, kernel, cfg, 3, torch.Generator().manual_seed(seed))
        sizes = den.last_schedule_sizes
        assert sizes.shape == (3, 3) and (sizes >= 1).all() and (sizes.sum(1) == 12).all()
        assert (ids != MASK).all()
        seen.update(tuple(r) for r in sizes.tolist())
    assert len(seen) > 1
    cfg = SamplerConfig(method="mdlm", schedule="fixed", steps=6, seq_len=24, strides=2)
    _, den = generate(model, kernel, cfg, 2, torch.Generator().manual_seed(0))
    assert den.last_schedule_sizes.tolist() == [[4, 4, 4]] * 2


def test_config_validation_messages():
    with pytest.raises(ValueError, match="multiple of strides"):
        SamplerConfig(steps=5, strides=2)
    with pytest.raises(ValueError, match="divisible"):
        SamplerConfig(seq_len=15, strides=2)
    with pytest.raises(ValueError, match="steps per block"):
        SamplerConfig(method="mdlm", schedule="dtc", steps=40, seq_len=16, strides=2)
    with pytest.raises(ValueError, match=r"absorbing \(mask\) kernel"):
        generate(tiny_model(), semantic_kernel(), SamplerConfig(method="mdlm", steps=2, seq_len=4), 1)
    with pytest.raises(ValueError, match=">= 0"):
        PenaltyConfig(lambda_freq=-1.0)


def test_association_is_read_from_the_artifact_files(tmp_path):
    import numpy as np

    from pipeline.common.neighbor_artifact import load_neighbor_tables

    from neighbor_tables import write_neighbor_artifact

    nb, vals, valid = tables(k=4)
    idx = np.concatenate([np.arange(V)[:, None], nb.numpy()[:, :2]], 1).astype(np.int32)
    w = np.concatenate([np.ones((V, 1)), vals.clamp_min(0).numpy()[:, :2]], 1).astype(np.float32)
    prior = valid.double() / valid.sum()
    write_neighbor_artifact(tmp_path / "nbr", dict(neighbors=nb, similarities=vals, valid_vocab=valid,
                                                   unigram_prior=prior), assoc_k=2, config={})
    loaded = load_neighbor_tables(tmp_path / "nbr")
    got = association_by_columns(loaded.assoc_indices, loaded.assoc_weights)
    want = association_by_columns(torch.from_numpy(idx), torch.from_numpy(w))
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert int(got.ptr[-1]) == int((w > 0).sum())  # the two-neighbour S+ of the files, not the 4-wide table


# --------------------------------------------------------------------------- exactness with an oracle denoiser
class IndependentOracle(torch.nn.Module):
    """The exact posterior p(x0^i | x_t) ∝ p(v) q_t(x_t^i | v) for data whose positions are i.i.d. ~ p."""

    def __init__(self, kernel, p):
        super().__init__()
        self.kernel, self.p = kernel, p
        self.cfg = ModelConfig.preset("tiny")  # time-conditioned: no caching

    def forward(self, x, t):
        lik = self.kernel.likelihood_of(x, float(t[0]))
        return (self.p.log() + lik.clamp_min(1e-300).log()).float()


@pytest.mark.parametrize("kernel_name,extra,max_tv", [
    ("semdlm_plus", {"method": "tau_leaping", "corrector_steps": 0}, 0.09),
    ("semdlm_plus", {"method": "tau_leaping", "corrector_steps": 1}, 0.09),
    ("mask", {"method": "mdlm"}, 0.09),
    ("mask", {"method": "mdlm", "schedule": "tc"}, 0.09),
    ("mask", {"method": "mdlm", "remask": "remdm_cap", "remask_eta": 0.05}, 0.09),
    # Eq 121 is a heuristic ("≈" in the paper): a kept token is biased towards itself, so only ask
    # that it ends far closer to the data than the prior it starts from (TV 0.55)
    ("semdlm_plus", {"method": "blockwise"}, 0.3),
])
def test_samplers_recover_iid_data_with_exact_posterior(kernel_name, extra, max_tv):
    kernel = semantic_kernel() if kernel_name == "semdlm_plus" else mask_kernel()
    torch.manual_seed(0)
    p = torch.distributions.Dirichlet(torch.full((V,), 0.3)).sample().double()
    p[MASK] = 0.0
    p /= p.sum()
    cfg = SamplerConfig(**{"steps": 16, "seq_len": 32, "strides": 2, **extra})
    ids, _ = generate(IndependentOracle(kernel, p), kernel, cfg, 64, torch.Generator().manual_seed(1))
    empirical = torch.bincount(ids.reshape(-1), minlength=V).double() / ids.numel()
    # 2048 draws over 64 categories: the sampling noise alone gives TV ~ 0.04-0.05
    assert 0.5 * (empirical - p).abs().sum() < max_tv
    if kernel_name == "semdlm_plus":
        assert 0.5 * (kernel.prior_probs() - p).abs().sum() > 0.5
