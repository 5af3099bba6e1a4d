"""Continuous-time ELBO of the conditional path (pipeline.core.ct_elbo): derivatives, the sparse code
against the dense reference, MDLM for mask, validity against the exact generative CTMC, tightness."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline import bound_check as bound_check_cli
from pipeline.core.ct_dense import ctelbo_integrand_dense, dense_rows, reverse_rates_dense
from pipeline.core.ct_elbo import antithetic_times, ctelbo_integrand, ctelbo_per_token
from pipeline.core.likelihood import continuous_bound_estimates, mdlm_integrand, prior_kl
from pipeline.research import bound_check as bc

from neighbor_tables import make_test_kernel, random_tables

pytestmark = pytest.mark.usefixtures("one_torch_thread")


PRESETS = ["mask", "uniform", "semdlm", "semdlm_softmax", "semdlm_plus", "semdlm_plus_eq118"]
V, K = 20, 5


def kernel(preset, folded=False):
    k_max = K + 4 if folded else K  # folded: SemDLM+ puts ranks beyond the table into its global branch
    return make_test_kernel(preset, V, 0, random_tables(V, K, 0, 1), k_max=k_max)


CASES = [(p, False) for p in PRESETS] + [("semdlm_plus", True)]


@pytest.mark.parametrize("preset,folded", CASES)
def test_marginal_derivative_matches_finite_differences(preset, folded):
    k, ids, h = kernel(preset, folded), torch.arange(V), 1e-6
    for t in (0.013, 0.31, 0.58, 0.97):
        fd = (k.marginal_rows(ids, t + h) - k.marginal_rows(ids, t - h)) / (2 * h)
        assert torch.allclose(k.marginal_derivative_rows(ids, t), fd, atol=1e-7)
        fd = (k.likelihood_of(ids, t + h) - k.likelihood_of(ids, t - h)) / (2 * h)
        assert torch.allclose(k.likelihood_derivative_of(ids, t), fd, atol=1e-7)
        assert k.marginal_derivative_rows(ids, t).sum(-1).abs().max() < 1e-12


@pytest.mark.parametrize("preset,folded", CASES)
def test_sparse_integrand_matches_the_dense_reference(preset, folded):
    k, g = kernel(preset, folded), torch.Generator().manual_seed(0)
    for t in (0.004, 0.37, 0.93, 1.0):
        x0 = torch.randint(1, V, (3, 16), generator=g)
        xt, _ = k.sample_xt(x0, torch.full((3,), t), generator=g)
        logits = 2 * torch.randn(3, 16, V, generator=g, dtype=torch.float64)
        sparse = ctelbo_per_token(k, logits, x0, xt, t)
        dense = ctelbo_integrand_dense(k, logits, x0, xt, t).reshape(3, 16)
        assert torch.allclose(sparse, dense, rtol=1e-10, atol=1e-10)
        assert (dense >= -1e-12).all()  # each term is a KL between jump measures


def test_gradient_matches_finite_differences():
    k, g = kernel("semdlm_plus", True), torch.Generator().manual_seed(3)
    x0 = torch.randint(1, V, (2, 4), generator=g)
    t = torch.tensor([0.35, 0.8])
    xt, _ = k.sample_xt(x0, t, generator=g)
    logits = torch.randn(2, 4, V, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda lg: ctelbo_integrand(k, lg, x0, xt, t), (logits,))


def test_per_sequence_times_and_padding():
    k, g = kernel("semdlm_plus", True), torch.Generator().manual_seed(1)
    x0 = torch.randint(1, V, (4, 8), generator=g)
    t = torch.tensor([0.1, 0.4, 0.7, 0.95])
    xt, _ = k.sample_xt(x0, t, generator=g)
    logits = torch.randn(4, 8, V, generator=g)
    mask = torch.rand(4, 8, generator=g) < 0.7
    full = ctelbo_per_token(k, logits, x0, xt, t)
    part = ctelbo_per_token(k, logits, x0, xt, t, mask)
    assert torch.allclose(part, full * mask)
    assert torch.allclose(ctelbo_per_token(k, logits, x0, xt, t, mask, chunk=5), part)  # position chunks
    for b in range(4):
        one = ctelbo_integrand(k, logits[b:b + 1], x0[b:b + 1], xt[b:b + 1], float(t[b]), mask[b:b + 1])
        assert torch.allclose(one, part[b:b + 1].sum(-1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mask_kernel_is_mdlm_to_1e_6(dtype):
    """SUBS: [MASK] never predicted, unmasked positions carried over -> MDLM's integrand and gradient."""
    k = make_test_kernel("mask", V, 0, alpha_schedule="cosine")
    g = torch.Generator().manual_seed(2)
    x0 = torch.randint(1, V, (6, 12), generator=g)
    t = torch.rand(6, generator=g, dtype=torch.float64).clamp_min(1e-3)
    xt, _ = k.sample_xt(x0, t, generator=g)
    logits = (3 * torch.randn(6, 12, V, generator=g)).to(dtype).requires_grad_(True)
    ours = ctelbo_integrand(k, logits, x0, xt, t)
    mdlm = mdlm_integrand(k, logits, x0, xt, t)
    # float64 logits: equal to 1e-6 nats; float32 logits: the logsumexp runs in float32 (MDLM upcasts first)
    tol = 1e-6 if dtype == torch.float64 else 1e-6 * float(mdlm.abs().max())
    assert (ours - mdlm).abs().max() < tol
    g1, = torch.autograd.grad(ours.sum(), logits)
    g2, = torch.autograd.grad(mdlm.sum(), logits)
    assert (g1 - g2).abs().max() < (1e-9 if dtype == torch.float64 else 1e-6 * float(g2.abs().max()))


def master_equations(toy, models, t_end=2e-3, steps=40):
    """Marginals at t_end of the generative CTMCs (rates reverse_rates_dense of each model) started at pi.

    Exponential integrator with midpoint rates (stable where a newly entered rank's rate ~ 1 / (t - kink));
    the grid is geometric towards t_end and towards each kink of k_t from above.
    """
    kern = toy.kernel
    z = torch.arange(kern.vocab_size)
    ts = bc.master_equation_grid(kern, t_end, steps)
    ps = [kern.prior_probs().clone() for _ in models]
    for t0, t1 in zip(ts[:-1], ts[1:]):
        tm = 0.5 * (t0 + t1)
        rows = dense_rows(kern, tm)
        for i, model in enumerate(models):
            r = reverse_rates_dense(kern, model(z, tm), z, tm, rows)
            ps[i] = ps[i] @ torch.linalg.matrix_exp((t0 - t1) * (r - torch.diag(r.sum(-1))))
    return ps


def random_model(vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    a, b = 2 * torch.randn(vocab, vocab, generator=g, dtype=torch.float64), torch.randn(vocab, vocab, generator=g,
                                                                                         dtype=torch.float64)
    return lambda z, t: a[z] + float(t) * b[z]


@pytest.mark.parametrize("preset", PRESETS)
def test_bound_is_above_the_exact_nll_of_the_generative_ctmc(preset):
    """Data processing on [t_min, 1]: bound >= KL(q_{t_min}(.|x0) || p^theta_{t_min}), with the model's
    marginal from its master equation; random and Bayes-optimal denoisers."""
    toy = bc.build_toy(preset, vocab=8, k_max=3, valid=6, seed=1)
    t_min = 2e-3
    models = {"random": random_model(8), "bayes": toy.denoiser}
    q = toy.kernel.marginal_rows(toy.valid_ids, t_min)
    for (name, model), p_model in zip(models.items(), master_equations(toy, list(models.values()), t_min)):
        assert abs(p_model.sum().item() - 1.0) < 1e-6
        bound = bc.ctelbo_exact_per_token(toy, nodes=4, model=model, t_min=t_min)
        kl = (q * (q.clamp_min(1e-300).log() - p_model.clamp_min(1e-300).log())).sum(-1)
        assert (bound >= kl - 1e-3).all(), (preset, name, bound, kl)
        if name == "bayes":  # its chain has exactly the data's forward marginals
            mix = toy.p_data @ toy.kernel.marginal_rows(torch.arange(8), t_min)
            assert torch.allclose(p_model, mix, atol=1e-3), (p_model, mix)
            assert (bound >= toy.exact_nll - 0.02).all()


def test_v60_toy_bayes_bound_is_within_one_nat_and_below_the_tstep_bound():
    toy = bc.build_toy("semdlm_plus", vocab=60, k_max=12, valid=57, seed=0)
    ids = toy.valid_ids[::14]  # 5 clean tokens: each x0's bound must exceed -log p(x0) = log 57
    ct = bc.ctelbo_exact_per_token(toy, nodes=4, ids=ids)
    assert (ct >= toy.exact_nll).all()
    assert ct.mean() < toy.exact_nll + 1.0, ct.mean()
    assert ct.mean() < bc.tstep_exact(toy, 8, ids) - 0.5


def test_monte_carlo_over_t_agrees_with_quadrature():
    toy = bc.build_toy("semdlm_plus", vocab=12, k_max=4, valid=10, seed=2)
    quad = bc.ctelbo_exact(toy, nodes=4)
    t = antithetic_times(64, torch.Generator().manual_seed(0), t_min=1e-4)
    mc = bc.prior_term(toy) + sum(float(bc.ctelbo_expected_integrand(toy, float(s)).mean()) for s in t) / t.numel()
    assert abs(mc - quad) < 0.01 * quad, (mc, quad)
    # the one-sample estimator (x0, t and x_t drawn) averages to the same value
    mean, se = bc.ctelbo_mc(toy, n=4096, seed=0, t_min=1e-4)
    assert abs(mean - quad) < 4 * se + 0.01, (mean, se, quad)


def test_the_reported_estimate_is_the_integrand_plus_the_prior_term():
    k, g = kernel("semdlm", False), torch.Generator().manual_seed(4)
    x0, t = torch.randint(1, V, (3, 6), generator=g), torch.tensor([0.2, 0.5, 0.9])
    model = lambda xt, tt: torch.randn(*xt.shape, V, generator=torch.Generator().manual_seed(7))  # noqa: E731
    est = continuous_bound_estimates(k, model, x0, t, generator=torch.Generator().manual_seed(5))
    assert set(est) == {"ctelbo_continuous"}
    est = est["ctelbo_continuous"]
    xt, _ = k.sample_xt(x0, t, generator=torch.Generator().manual_seed(5))
    ref = ctelbo_integrand(k, model(xt, t), x0, xt, t) + prior_kl(k, x0)
    assert torch.allclose(est, ref)


def test_uniform_against_the_udlm_closed_form():
    """Both are valid bounds. UDLM's forward chain is Markov, so at its own optimum (p_theta = p_data for
    context-free data: it plugs p_theta into the Markov posterior) it is tight; with the exact posterior
    as the denoiser (what cross-entropy training learns) the conditional-path ELBO is the tighter one."""
    toy = bc.build_toy("uniform", vocab=12, k_max=4, valid=10, seed=0)
    ct, udlm = bc.ctelbo_exact(toy), bc.udlm_exact(toy)
    udlm_opt = bc.udlm_exact(toy, model=bc.data_denoiser(toy))
    assert abs(udlm_opt - toy.exact_nll) < 1e-4, udlm_opt
    assert toy.exact_nll < ct < udlm, (ct, udlm)


def test_bound_check_cli_prints_the_summary_line(capsys):
    assert bound_check_cli.main(["--kernel", "semdlm_plus", "--vocab", "10", "--k-max", "3", "--valid", "8",
                    "--steps", "2", "4", "--mc", "256"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    fields = dict(item.split("=") for item in last.split())
    assert set(fields) == {"exact", "tstep", "ctelbo", "tilted", "corrected", "resampled", "resampled_relaxed"}
    assert math.isclose(float(fields["exact"]), math.log(8), abs_tol=1e-4)
    assert float(fields["exact"]) <= float(fields["ctelbo"]) <= float(fields["tstep"])
    # the resampling chain (docs/likelihood.md 6.7) is tighter than the flux chain; its O(V) form in between
    assert float(fields["exact"]) < float(fields["resampled"]) < float(fields["resampled_relaxed"]) < float(
        fields["ctelbo"])
    # Eq 120's optimum is looser as it is; corrected, it is the posterior again (the printed 4 decimals)
    assert float(fields["tilted"]) > float(fields["ctelbo"]) + 0.1
    assert abs(float(fields["corrected"]) - float(fields["ctelbo"])) <= 1e-4
