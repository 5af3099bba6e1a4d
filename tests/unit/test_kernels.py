"""Transition kernels: sampled marginals vs closed form, schedule boundaries, validation, fractional k_t."""
from __future__ import annotations

import pytest
import torch

from pipeline.common.artifacts import ArtifactError
from pipeline.common.neighbor_artifact import load_neighbor_tables
from pipeline.core import schedules as sch
from pipeline.core.kernels import KernelConfig, build_kernel

from neighbor_tables import make_test_kernel, write_neighbor_artifact
from neighbor_tables import random_tables as shared_random_tables

V, K, MASK = 12, 5, 0
PRESETS = ["mask", "uniform", "semdlm", "semdlm_softmax", "semdlm_plus", "semdlm_plus_eq118"]


def random_tables(vocab=V, k=K, seed=0):
    return shared_random_tables(vocab, k, MASK, seed)


def make_kernel(preset, **overrides):
    overrides.setdefault("k_max", K if preset != "semdlm_plus" else K + 3)  # + 3: mass beyond the table
    return make_test_kernel(preset, V, MASK, random_tables(), **overrides)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("t", [0.15, 0.5, 0.9])
def test_sampled_marginals_match_closed_form(preset, t):
    kernel = make_kernel(preset)
    n, x0_token = 40_000, 3
    x0 = torch.full((200, n // 200), x0_token)
    xt, changed = kernel.sample_xt(x0, torch.full((200,), t), generator=torch.Generator().manual_seed(7))
    assert torch.equal(changed, xt != x0)
    empirical = torch.bincount(xt.flatten(), minlength=V).double() / n
    analytic = kernel.marginal_rows(torch.tensor([x0_token]), t)[0]
    # every category within 5 standard errors (fixed seed, so the test is deterministic)
    tol = 5 * (analytic * (1 - analytic) / n).sqrt() + 1e-4
    assert ((empirical - analytic).abs() <= tol).all(), (empirical, analytic)


@pytest.mark.parametrize("preset", PRESETS)
def test_sparse_dense_and_likelihood_views_agree(preset):
    kernel = make_kernel(preset)
    x0 = torch.arange(V)
    for t in (0.0, 0.37, 1.0):
        rows = kernel.marginal_rows(x0, t)
        assert torch.allclose(rows.sum(-1), torch.ones(V, dtype=torch.float64))
        assert torch.allclose(kernel.likelihood_of(x0, t), rows.T)  # q_t(z | v) for every v, per z
        m = kernel.marginal_sparse(x0.view(3, 4), t)
        assert m.ids.shape == (3, 4, kernel.num_ranks) and m.self_prob.shape == (3, 4)


@pytest.mark.parametrize("preset", PRESETS)
def test_t0_returns_x0(preset):
    kernel = make_kernel(preset)
    x0 = torch.randint(V, (4, 30), generator=torch.Generator().manual_seed(1))
    xt, changed = kernel.sample_xt(x0, torch.zeros(4))
    assert torch.equal(xt, x0) and not changed.any()


@pytest.mark.parametrize("preset", ["mask", "uniform", "semdlm_plus"])
def test_t1_is_the_reference_distribution(preset):
    """These kernels forget x0 completely at t = 1: every row of q_1 is pi, and draws follow pi."""
    kernel = make_kernel(preset)
    prior = kernel.prior_probs()
    assert torch.allclose(kernel.marginal_rows(torch.arange(V), 1.0), prior.expand(V, V))
    x0 = torch.randint(V, (100, 100), generator=torch.Generator().manual_seed(2))
    xt, _ = kernel.sample_xt(x0, torch.ones(100), generator=torch.Generator().manual_seed(3))
    empirical = torch.bincount(xt.flatten(), minlength=V).double() / xt.numel()
    assert ((empirical - prior).abs() <= 5 * (prior * (1 - prior) / xt.numel()).sqrt() + 1e-4).all()
    draws = kernel.sample_prior((100, 100), generator=torch.Generator().manual_seed(4))
    assert torch.allclose(torch.bincount(draws.flatten(), minlength=V).double() / 1e4, prior, atol=0.02)
    if preset == "mask":
        assert (xt == MASK).all()
    if preset == "semdlm_plus":  # global branch nu = U(valid vocab)
        assert prior[MASK] == 0 and torch.allclose(prior[1:], torch.full((V - 1,), 1 / (V - 1), dtype=torch.float64))


def test_reference_of_x0_dependent_kernel_mixes_rows_and_is_positive():
    kernel = make_kernel("semdlm")
    tables = random_tables()
    rows = kernel.marginal_rows(torch.arange(V), 1.0)
    expected = (tables["unigram_prior"][:, None] * rows).sum(0)
    floor = kernel.cfg.prior_floor
    assert torch.allclose(kernel.prior_probs(), (1 - floor) * expected + floor / V)
    assert (kernel.prior_probs() > 0).all()


def test_alpha_plus_beta_validated_at_config_time():
    with pytest.raises(ValueError, match="alpha_t \\+ beta_t must be <= 1"):
        KernelConfig(name="semdlm_plus", alpha_schedule="power", alpha_min=0.3, beta_max=0.9)
    with pytest.raises(ValueError, match="alpha_t \\+ beta_t must be <= 1"):  # violated mid-way only
        KernelConfig(name="semdlm_plus", alpha_schedule="power", alpha_min=0.0, alpha_power=0.5,
                     beta_max=1.0, beta_power=1.0)
    KernelConfig.preset("semdlm_plus")  # alpha = 1 - t, beta = t^2: 1 - t + t^2 <= 1
    with pytest.raises(ValueError, match="kernel name"):
        KernelConfig(name="gaussian")


def test_main_text_preset_schedules():
    kernel = make_kernel("semdlm_plus", k_max=K)
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    alpha, beta, lam = kernel.branch_weights(t)
    assert torch.allclose(alpha, 1 - t) and torch.allclose(beta, t ** 2) and torch.allclose(lam, t - t ** 2)


def test_fractional_k_interpolates_between_neighbourhoods():
    probs = sch.fractional_knn_probs(torch.tensor([2.5, 3.0], dtype=torch.float64), 5)
    assert torch.allclose(probs[0], torch.tensor([0.5 / 2 + 0.5 / 3] * 2 + [0.5 / 3, 0, 0], dtype=torch.float64))
    assert torch.allclose(probs[1], torch.tensor([1 / 3] * 3 + [0, 0], dtype=torch.float64))  # Eq 103 exactly
    kernel = make_kernel("semdlm")  # q_t continuous in t although k_t crosses integers
    ts = torch.linspace(0.05, 1.0, 400, dtype=torch.float64)
    rows = torch.stack([kernel.marginal_rows(torch.tensor([4]), float(t))[0] for t in ts])
    assert (rows[1:] - rows[:-1]).abs().max() < 0.02


def test_mass_beyond_table_goes_to_global_branch():
    kernel = make_kernel("semdlm_plus", k_max=2 * K)  # k_t reaches 10 with only 5 stored ranks
    t = 0.8
    alpha, beta, lam = kernel.branch_weights(t)
    k_t = 1 + (2 * K - 1) * t  # 8.2 > 5 stored ranks: mixture 0.8 U(top-8) + 0.2 U(top-9)
    f, w = int(k_t), k_t - int(k_t)
    within = (1 - w) * K / f + w * K / (f + 1)  # share of the local mass on the 5 stored ranks
    raw_lam = 1 - alpha - t ** 2
    assert torch.isclose(lam, raw_lam * within) and torch.isclose(beta, t ** 2 + raw_lam * (1 - within))


def test_self_is_never_a_neighbour():
    tables = random_tables()
    tables["neighbors"][3, 0] = 3
    with pytest.raises(ValueError, match="own neighbour"):
        build_kernel(KernelConfig.preset("semdlm_plus"), V, mask_id=MASK, **tables)
    kernel = make_kernel("semdlm_plus")
    x0 = torch.full((50, 50), 5)
    xt, changed = kernel.sample_xt(x0, torch.full((50,), 0.5), generator=torch.Generator().manual_seed(0))
    assert torch.equal(changed, xt != 5)


def test_load_neighbor_tables_round_trip_and_refusals(tmp_path):
    tables = random_tables()
    write_neighbor_artifact(tmp_path / "nb", tables, config={"k": K})
    loaded = load_neighbor_tables(tmp_path / "nb")
    assert torch.equal(loaded.neighbors, tables["neighbors"]) and loaded.k_max == K
    kernel = build_kernel(KernelConfig.preset("semdlm_plus", k_max=K), loaded.vocab_size, **loaded.kernel_inputs())
    assert kernel.num_ranks == K
    write_neighbor_artifact(tmp_path / "other", tables, config={"k": K}, stage="preprocess")
    with pytest.raises(ArtifactError):
        load_neighbor_tables(tmp_path / "other")
    bad = dict(tables, neighbors=tables["neighbors"].clone())
    bad["neighbors"][0, 0] = 0
    write_neighbor_artifact(tmp_path / "bad", bad, config={"k": K}, check=False)
    with pytest.raises(ArtifactError, match="own neighbour"):
        load_neighbor_tables(tmp_path / "bad")
