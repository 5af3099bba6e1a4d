"""The resampling chain's path bound (pipeline/research/realisation.py, docs/likelihood.md Sec 6.7): rho = 0 is
the conditional-path ELBO, for uniform it is UDLM's, it bounds its own generative CTMC's NLL, and on the toys
it is tighter than the flux chain's."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.core.ct_elbo import ctelbo_per_token
from pipeline.core.likelihood import udlm_integrand
from pipeline.core.posterior import Reading
from pipeline.research import bound_check as bc
from pipeline.research import realisation

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_scores(n, vocab, seed, invalid=(0,)):
    """Random clean-token logits and their softmax f, with f = 0 on ``invalid`` ([MASK] in the toys)."""
    g = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(n, vocab, generator=g, dtype=torch.float64)
    logits[:, list(invalid)] = -math.inf
    return logits, torch.softmax(logits, -1)


@pytest.mark.parametrize("preset", ["semdlm_plus", "semdlm_plus_eq118", "uniform"])
@pytest.mark.parametrize("t", [0.03, 0.3, 0.8])
def test_rho_zero_is_the_conditional_path_elbo(preset, t):
    toy = bc.build_toy(preset, vocab=12, k_max=4, valid=10, seed=0)
    x0, z = bc.supported_pairs(toy, t)
    logits, f = random_scores(z.numel(), 12, seed=1)
    ours = realisation.integrand(toy.kernel, f, x0, z, t, rho=0.0)
    ref = ctelbo_per_token(toy.kernel, logits.unsqueeze(1), x0.unsqueeze(1), z.unsqueeze(1), t,
                           reading=Reading(True)).squeeze(1)
    assert torch.allclose(ours, ref, rtol=1e-9, atol=1e-9), (ours - ref).abs().max()


@pytest.mark.parametrize("t", [0.03, 0.3, 0.8])
def test_uniform_resampling_chain_is_udlm(t):
    """rho_t = beta' / (1 - beta) leaves uniform no flux: the chain is UDLM's, and so is the integrand."""
    toy = bc.build_toy("uniform", vocab=12, k_max=4, valid=10, seed=0)
    x0, z = bc.supported_pairs(toy, t)
    logits, f = random_scores(z.numel(), 12, seed=2, invalid=())  # UDLM's p_theta lives on all of V
    rho = realisation.resample_rate(toy.kernel, t)
    (alpha, _, _), (dalpha, _, _) = toy.kernel.branch_weights_and_derivatives(t)
    assert rho == pytest.approx(-float(dalpha) / float(alpha))
    ours = realisation.integrand(toy.kernel, f, x0, z, t, rho)
    n = z.numel()
    ref = udlm_integrand(logits.unsqueeze(1), x0.unsqueeze(1), z.unsqueeze(1), alpha.expand(n), dalpha.expand(n))
    assert torch.allclose(ours, ref.squeeze(1), rtol=1e-9, atol=1e-9), (ours - ref.squeeze(1)).abs().max()


def resampling_master_equation(toy, model, t_end, steps=40):
    """The marginal at t_end of the resampling chain's generative CTMC (model_rates), started at pi."""
    kern = toy.kernel
    z = torch.arange(kern.vocab_size)
    ts = bc.master_equation_grid(kern, t_end, steps)
    p = kern.prior_probs().clone()
    for t0, t1 in zip(ts[:-1], ts[1:]):
        tm = 0.5 * (t0 + t1)
        f = torch.softmax(model(z, tm).to(torch.float64), -1)
        r, _ = realisation.model_rates(kern, f, z, tm, realisation.resample_rate(kern, tm))
        p = p @ torch.linalg.matrix_exp((t0 - t1) * (r - torch.diag(r.sum(-1))))
    return p


@pytest.mark.parametrize("preset", ["semdlm_plus", "uniform"])
@pytest.mark.parametrize("relaxed", [False, True])
def test_bound_is_above_the_exact_nll_of_its_generative_ctmc(preset, relaxed):
    """Data processing on [t_min, 1]: bound >= KL(q_{t_min}(.|x0) || p^theta_{t_min}) for a random clean-token
    model and for the exact one, whose chain has the data's forward marginals."""
    toy = bc.build_toy(preset, vocab=8, k_max=3, valid=6, seed=1)
    t_min = 2e-3
    g = torch.Generator().manual_seed(3)
    a, b = 2 * torch.randn(8, 8, generator=g, dtype=torch.float64), torch.randn(8, 8, generator=g, dtype=torch.float64)
    a[:, 0] = b[:, 0] = -math.inf  # never [MASK] as the clean token
    models = {"random": lambda z, t: a[z] + float(t) * b[z], "bayes": toy.clean_scores}
    q = toy.kernel.marginal_rows(toy.valid_ids, t_min)
    for name, model in models.items():
        p_model = resampling_master_equation(toy, model, t_min)
        assert abs(p_model.sum().item() - 1.0) < 1e-6
        bound = bc.resampled_exact_per_token(toy, relaxed, nodes=4, model=model, t_min=t_min)
        kl = (q * (q.clamp_min(1e-300).log() - p_model.clamp_min(1e-300).log())).sum(-1)
        assert (bound >= kl - 1e-3).all(), (preset, name, bound, kl)
        if name == "bayes":
            mix = toy.p_data @ toy.kernel.marginal_rows(torch.arange(8), t_min)
            assert torch.allclose(p_model, mix, atol=1e-3), (p_model, mix)


def test_the_resampling_chain_is_tighter_on_the_toys():
    """Exact posterior, context-free data: exact for mask and uniform; for SemDLM+ between the exact NLL and
    the flux chain's bound, its O(V) relaxation in between."""
    for preset in ("mask", "uniform"):
        toy = bc.build_toy(preset, vocab=12, k_max=4, valid=10, seed=0)
        assert bc.resampled_exact(toy) == pytest.approx(toy.exact_nll, abs=1e-4)
    toy = bc.build_toy("semdlm_plus", vocab=12, k_max=4, valid=10, seed=0)
    exact, flux = toy.exact_nll, bc.ctelbo_exact(toy)
    resampled, relaxed = bc.resampled_exact(toy), bc.resampled_exact(toy, relaxed=True)
    assert exact < resampled < relaxed < flux, (exact, resampled, relaxed, flux)
    assert resampled - exact < 0.5 * (flux - exact)


def test_no_global_branch_no_resampling():
    toy = bc.build_toy("semdlm", vocab=12, k_max=4, valid=10, seed=0)
    assert realisation.resample_rate(toy.kernel, 0.5) == 0.0


@pytest.mark.parametrize("preset,table_ranks", [("semdlm_plus", None), ("semdlm_plus", 3), ("semdlm_plus_eq118", None),
                                                ("uniform", None)])
@pytest.mark.parametrize("t", [0.03, 0.3, 0.8])
def test_the_sparse_frequency_floor_is_the_dense_integrand(preset, table_ranks, t):
    """floor_integrand (real vocabularies: no [V, V] table) = integrand with f = u at every position."""
    toy = bc.build_toy(preset, vocab=12, k_max=5, valid=10, seed=0, table_ranks=table_ranks)
    x0, z = bc.supported_pairs(toy, t)
    g = torch.Generator().manual_seed(4)
    u = torch.rand(12, generator=g, dtype=torch.float64)
    u[0] = 0.0
    u = u / u.sum()
    rho = realisation.resample_rate(toy.kernel, t)
    for relaxed in (False, True):
        dense = realisation.integrand(toy.kernel, u.expand(z.numel(), -1), x0, z, t, rho, relaxed)
        sparse = realisation.floor_integrand(toy.kernel, u, x0, z, t, chunk=7, relaxed=relaxed)
        assert torch.allclose(sparse, dense, rtol=1e-9, atol=1e-9), (relaxed, (sparse - dense).abs().max())
