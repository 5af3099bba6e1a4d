"""The sparse resampling-chain integrand (pipeline/core/ct_resample.py), relaxed and exact, against the dense
reference (pipeline/research/realisation.py): values and gradients, with and without the change-aware
correction, on stored and folded tables."""
from __future__ import annotations

import math

import pytest
import torch

from pipeline.core.ct_elbo import ctelbo_per_token
from pipeline.core.ct_resample import resampled_per_token, resampling_applies
from pipeline.core.posterior import Reading
from pipeline.research import bound_check as bc
from pipeline.research import realisation

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("preset,table_ranks", [("semdlm_plus", None), ("semdlm_plus", 3), ("semdlm_plus_eq118", None)])
@pytest.mark.parametrize("t", [0.002, 0.03, 0.3, 0.8, 0.99])
@pytest.mark.parametrize("log_ratio", [0.0, math.log(10.0)])
@pytest.mark.parametrize("exact", [False, True])
def test_sparse_integrand_is_the_dense_one(preset, table_ranks, t, log_ratio, exact):
    toy = bc.build_toy(preset, vocab=12, k_max=5, valid=10, seed=0, table_ranks=table_ranks)
    x0, z = bc.supported_pairs(toy, t)
    g = torch.Generator().manual_seed(5)
    logits = (2.0 * torch.randn(z.numel(), 12, generator=g, dtype=torch.float64)).requires_grad_()
    bias = torch.zeros(12, dtype=torch.float64)
    bias[0] = -math.inf  # [MASK] is never clean (the model's support bias)
    lg = logits + bias
    sparse = resampled_per_token(toy.kernel, lg.unsqueeze(1), x0.unsqueeze(1), z.unsqueeze(1), t,
                                 reading=Reading(True, log_ratio), exact=exact).squeeze(1)
    shifted = lg + log_ratio * torch.nn.functional.one_hot(z, 12).to(torch.float64)
    f = torch.softmax(shifted, -1)
    dense = realisation.integrand(toy.kernel, f, x0, z, t, realisation.resample_rate(toy.kernel, t),
                                  relaxed=not exact)
    assert torch.allclose(sparse, dense, rtol=1e-9, atol=1e-9), (sparse - dense).abs().max()
    g_sparse, = torch.autograd.grad(sparse.sum(), logits)
    g_dense, = torch.autograd.grad(dense.sum(), logits)
    assert torch.allclose(g_sparse, g_dense, rtol=1e-7, atol=1e-9), (g_sparse - g_dense).abs().max()


def test_applies_to_semdlm_plus_only():
    for preset, applies in (("semdlm_plus", True), ("semdlm_plus_eq118", True), ("uniform", False), ("mask", False),
                            ("semdlm", False), ("semdlm_softmax", False)):
        assert resampling_applies(bc.build_toy(preset, vocab=12, k_max=4, valid=10).kernel) is applies, preset
    toy = bc.build_toy("uniform", vocab=12, k_max=4, valid=10)
    with pytest.raises(ValueError, match="kNN kernels with a global branch"):
        resampled_per_token(toy.kernel, torch.zeros(1, 1, 12), torch.ones(1, 1, dtype=torch.long),
                            torch.ones(1, 1, dtype=torch.long), 0.5)


def test_the_elbo_objective_trains_the_chain_it_is_given():
    """loss=elbo with elbo_chain=resampling: the loss is the resampling chain's integrand, per real token."""
    from pipeline.core.objectives import DiffusionObjective

    toy = bc.build_toy("semdlm_plus", vocab=12, k_max=5, valid=10, seed=0)
    g = torch.Generator().manual_seed(6)
    x0 = toy.valid_ids[torch.randint(toy.valid_ids.numel(), (3, 4), generator=g)]
    t = torch.tensor([0.2, 0.5, 0.9])
    logits = torch.randn(3, 4, 12, generator=g, dtype=torch.float64)
    logits[..., 0] = -math.inf
    for chain, ref in (("flux", ctelbo_per_token), ("resampling", resampled_per_token)):
        obj = DiffusionObjective(toy.kernel, "elbo", reading=Reading(True), elbo_chain=chain)
        batch = obj.prepare(x0, torch.ones_like(x0, dtype=torch.bool), t, generator=torch.Generator().manual_seed(0))
        losses = obj.token_losses(logits, batch)
        expect = ref(toy.kernel, logits, x0, batch.inputs, t, reading=Reading(True)).float()
        assert torch.allclose(losses, expect), chain
    # and the two chains' losses differ: the option is not a no-op
    flux = DiffusionObjective(toy.kernel, "elbo", reading=Reading(True)).token_losses(logits, batch)
    assert not torch.allclose(flux, losses)
    with pytest.raises(ValueError, match="elbo_chain=resampling needs loss=elbo"):
        DiffusionObjective(toy.kernel, "change_aware", reading=Reading(True), elbo_chain="resampling")
    with pytest.raises(ValueError, match="elbo_chain=resampling needs"):
        DiffusionObjective(bc.build_toy("uniform", vocab=12, k_max=4, valid=10).kernel, "elbo", reading=Reading(True),
                           elbo_chain="resampling")


def test_exact_integrand_with_a_t_per_sequence():
    """The exact form groups positions by t (one sparse product per distinct t, chunks of rows spanning several):
    a batch of sequences at different t equals the dense integrand of each sequence at its own t."""
    toy = bc.build_toy("semdlm_plus", vocab=12, k_max=5, valid=10, seed=0)
    g = torch.Generator().manual_seed(7)
    B, L = 6, 9  # 54 positions: the V-sized pass's 32-row chunks hold rows of several t
    x0 = toy.valid_ids[torch.randint(toy.valid_ids.numel(), (B, L), generator=g)]
    t = torch.tensor([0.05, 0.3, 0.3, 0.6, 0.85, 0.97], dtype=torch.float64)
    xt, _ = toy.kernel.sample_xt(x0, t, generator=g)
    logits = 2.0 * torch.randn(B, L, 12, generator=g, dtype=torch.float64)
    logits[..., 0] = -math.inf
    got = resampled_per_token(toy.kernel, logits, x0, xt, t, reading=Reading(True, math.log(10.0)))
    for b in range(B):
        shifted = logits[b] + math.log(10.0) * torch.nn.functional.one_hot(xt[b], 12).to(torch.float64)
        dense = realisation.integrand(toy.kernel, torch.softmax(shifted, -1), x0[b], xt[b], float(t[b]),
                                      realisation.resample_rate(toy.kernel, float(t[b])))
        assert torch.allclose(got[b], dense, rtol=1e-9, atol=1e-9), (b, (got[b] - dense).abs().max())
