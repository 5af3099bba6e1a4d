"""The objectives the trainer runs (Eq 120, the NELBO-weighted loss, the AR loss) against hand computations.

Every loss here goes through ``DiffusionObjective`` / ``AutoregressiveObjective``, the classes
``pipeline.training.loop.Trainer`` calls for its step, its validation and its gradient probe.
"""
import math

import pytest
import torch

from pipeline.core.kernels import KernelConfig, build_kernel
from pipeline.core.objectives import (
    AutoregressiveObjective,
    DiffusionObjective,
    LossConfig,
    change_aware_weights,
    next_token_nll,
    per_token_cross_entropy,
)
from pipeline.core.posterior import Reading

MASK_KERNEL = build_kernel(KernelConfig.preset("mask"), 5, mask_id=4)


def change_aware_loss(logits, x0, changed, pad, lambda_chg=None, lambda_same=None):
    """Eq 120 of one batch through the diffusion objective (x_t does not enter the loss terms)."""
    defaults = LossConfig()
    cfg = LossConfig(defaults.lambda_chg if lambda_chg is None else lambda_chg,
                     defaults.lambda_same if lambda_same is None else lambda_same)
    objective = DiffusionObjective(MASK_KERNEL, "change_aware", cfg)
    batch = objective.weigh(x0, ~pad if pad is not None else torch.ones_like(x0, dtype=torch.bool), x0, None, changed)
    num, den = objective.loss_terms(logits, batch)
    return num / den


def _case():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=g)
    x0 = torch.tensor([[1, 4, 0], [2, 2, 3]])
    changed = torch.tensor([[True, False, True], [False, False, True]])
    pad = torch.tensor([[False, False, False], [False, False, True]])  # last token of row 2 is padding
    return logits, x0, changed, pad


def _hand_ce(logits, x0):
    """-log softmax computed element by element, independent of F.cross_entropy."""
    out = torch.empty(x0.shape)
    for b in range(x0.shape[0]):
        for i in range(x0.shape[1]):
            row = logits[b, i].tolist()
            out[b, i] = math.log(sum(math.exp(v) for v in row)) - row[x0[b, i]]
    return out


def test_per_token_cross_entropy_matches_hand_computation():
    logits, x0, _, _ = _case()
    assert torch.allclose(per_token_cross_entropy(logits, x0), _hand_ce(logits, x0), atol=1e-5)


def test_eq120_against_hand_computation_with_padding_excluded():
    logits, x0, changed, pad = _case()
    ce = _hand_ce(logits, x0)
    lam_chg, lam_same = 5.0, 0.5
    # real positions: (0,0) chg, (0,1) same, (0,2) chg, (1,0) same, (1,1) same; (1,2) is padding
    num = lam_chg * (ce[0, 0] + ce[0, 2]) + lam_same * (ce[0, 1] + ce[1, 0] + ce[1, 1])
    den = 2 * lam_chg + 3 * lam_same
    got = change_aware_loss(logits, x0, changed, pad, lam_chg, lam_same)
    assert torch.allclose(got, num / den, atol=1e-5)
    # the padded position would have carried weight lam_chg: it really was dropped
    assert not torch.allclose(change_aware_loss(logits, x0, changed, None, lam_chg, lam_same), got, atol=1e-4)
    w = change_aware_weights(changed, ~pad, LossConfig(lam_chg, lam_same))
    assert w.tolist() == [[5.0, 0.5, 5.0], [0.5, 0.5, 0.0]]
    objective = DiffusionObjective(MASK_KERNEL, "change_aware", LossConfig(lam_chg, lam_same))
    n, d = objective.loss_terms(logits, objective.weigh(x0, ~pad, x0, None, changed))
    assert torch.allclose(n, num, atol=1e-5) and d.item() == den


def test_eq120_equal_weights_is_plain_mean_and_padding_logits_cannot_leak():
    logits, x0, changed, pad = _case()
    plain = _hand_ce(logits, x0)[~pad].mean()
    assert torch.allclose(change_aware_loss(logits, x0, changed, pad, 1.0, 1.0), plain, atol=1e-5)
    poisoned = logits.clone()
    poisoned[1, 2] = float("inf")      # garbage at a padded position must not produce NaN
    loss = change_aware_loss(poisoned, x0, changed, pad, 1.0, 1.0)
    assert torch.isfinite(loss)


def test_eq120_gradient_flows_only_through_real_positions():
    logits, x0, changed, pad = _case()
    logits.requires_grad_(True)
    change_aware_loss(logits, x0, changed, pad, 3.0, 1.0).backward()
    assert logits.grad[1, 2].abs().sum() == 0
    assert (logits.grad[~pad].abs().sum(-1) > 0).all()


@pytest.mark.parametrize("chg,same", [(0.1, 1.0), (1.0, -0.1), (0.0, 0.0)])
def test_lambda_validation(chg, same):
    with pytest.raises(ValueError, match="lambda"):
        LossConfig(chg, same)
    logits, x0, changed, pad = _case()
    with pytest.raises(ValueError, match="lambda"):
        change_aware_loss(logits, x0, changed, pad, chg, same)


def test_nelbo_weighted_loss_weighs_changed_positions_by_one_over_t_and_counts_real_tokens():
    logits, x0, changed, pad = _case()
    ce = _hand_ce(logits, x0)
    t = torch.tensor([0.5, 0.25])  # mask kernel, alpha_t = 1 - t: -alpha'/(1 - alpha) = 1/t -> weights 2 and 4
    objective = DiffusionObjective(MASK_KERNEL, "elbo")
    batch = objective.weigh(x0, ~pad, x0, t, changed)
    num, den = objective.loss_terms(logits, batch)
    subs = _hand_ce(logits[..., :4], x0.clamp(max=3))  # SUBS: [MASK] (id 4) is no clean token; targets 0..3
    expected = (2.0 * (subs[0, 0] + subs[0, 2])) / 5             # (1,2) is padding; 5 real tokens
    assert torch.allclose(num / den, expected, atol=1e-5)
    assert not torch.allclose(num / den, (2.0 * (ce[0, 0] + ce[0, 2])) / 5, atol=1e-3)  # SUBS matters here
    assert den.item() == 5


def _ar_loss(logits, x0, pad=None):
    objective = AutoregressiveObjective()
    real = torch.ones_like(x0, dtype=torch.bool) if pad is None else ~pad
    batch = objective.prepare(x0, real)
    num, den = objective.loss_terms(logits[:, :-1], batch)
    return num / den


def test_ar_loss_shifts_targets_and_skips_padded_targets():
    logits, x0, _, pad = _case()
    ce = _hand_ce(logits[:, :-1], x0[:, 1:])
    # targets x0[:, 1:]; row 2's second target (position 2) is padding
    expected = (ce[0, 0] + ce[0, 1] + ce[1, 0]) / 3
    assert torch.allclose(_ar_loss(logits, x0, pad), expected, atol=1e-5)
    assert torch.allclose(_ar_loss(logits, x0), ce.mean(), atol=1e-5)
    # the exact NLL the AR bound reports is the same sum, per sequence and in float64
    nll = next_token_nll(logits, x0, ~pad)
    assert torch.allclose(nll, torch.stack([ce[0].sum(), ce[1, 0]]).double(), atol=1e-5)


# --------------------------------------------------------------------------- the kernel's own ELBO and its bounds
def _semantic_case(preset="semdlm_plus", V=16, K=4, B=3, L=5):
    from neighbor_tables import make_test_kernel, random_tables

    kernel = make_test_kernel(preset, V, 0, random_tables(V, K, 0), k_max=K)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randint(1, V, (B, L), generator=g)
    real = torch.ones(B, L, dtype=torch.bool)
    real[-1, -2:] = False
    t = torch.tensor([0.2, 0.55, 0.9])
    return kernel, x0, real, t, g


def test_elbo_loss_of_a_semantic_kernel_is_its_conditional_path_elbo_per_real_token():
    from pipeline.core.ct_elbo import ctelbo_integrand

    kernel, x0, real, t, g = _semantic_case()
    objective = DiffusionObjective(kernel, "elbo")
    batch = objective.prepare(x0, real, t, generator=g)
    logits = torch.randn(*x0.shape, kernel.vocab_size, generator=g, requires_grad=True)
    num, den = objective.loss_terms(logits, batch)
    expected = ctelbo_integrand(kernel, logits, x0, batch.inputs, t, real).sum()
    assert den.item() == real.sum().item()
    assert torch.allclose(num.double(), expected, rtol=1e-5)
    num.backward()  # differentiable in p_theta; padding gets no gradient
    assert logits.grad[~real].abs().sum() == 0 and logits.grad[real].abs().sum() > 0


def test_bounds_of_each_kernel_and_the_tightest_is_reported():
    from pipeline.core.likelihood import bound_estimates, tightest

    kernel, x0, real, t, g = _semantic_case("uniform")
    model = lambda xt, tt: torch.zeros(*xt.shape, kernel.vocab_size)  # noqa: E731 - a uniform denoiser
    objective = DiffusionObjective(kernel)
    est = objective.bound_estimates(model, x0, real, t=t, generator=g)
    assert set(est) == {"ctelbo_continuous", "udlm_continuous", "udlm_converted"}  # all on the same x_t
    totals = {name: float(v.sum()) for name, v in est.items()}
    assert tightest(totals) == min(totals.items(), key=lambda kv: kv[1])
    corrected = DiffusionObjective(kernel, reading=Reading(True, math.log(10.0)))
    est = corrected.bound_estimates(model, x0, real, t=t, generator=g)
    assert set(est) == set(corrected.bound_names()) == {"ctelbo_continuous", "udlm_continuous",
                                                       "ctelbo_continuous_uncorrected", "udlm_continuous_uncorrected"}
    totals = {name: float(v.sum()) for name, v in est.items()}
    totals["udlm_continuous_uncorrected"] = -1.0  # another model's bound is never the one reported
    assert "uncorrected" not in tightest(totals)[0]
    kernel, x0, real, t, g = _semantic_case("semdlm")
    assert set(bound_estimates(kernel, model, x0, real, t=t, generator=g)) == {"ctelbo_continuous"}
    tstep = bound_estimates(kernel, model, x0, real, bound="tstep", generator=g, num_steps=10, mc_steps=2)
    assert set(tstep) == {"discrete_T10"}
    with pytest.raises(ValueError, match="pass t"):
        bound_estimates(kernel, model, x0, real, generator=g)


def test_bound_names_are_what_the_bounds_return():
    """Validation all-reduces one total per name before seeing data: the names must match the estimates."""
    from pipeline.core.objectives import AutoregressiveObjective

    kernel, x0, real, t, g = _semantic_case("uniform")
    model = lambda xt, tt: torch.zeros(*xt.shape, kernel.vocab_size)  # noqa: E731
    objective = DiffusionObjective(kernel)
    assert set(objective.bound_names()) == set(objective.bound_estimates(model, x0, real, t=t, generator=g))
    tstep = objective.bound_estimates(model, x0, real, bound="tstep", generator=g, num_steps=6, mc_steps=1)
    assert objective.bound_names("tstep", 6) == tuple(tstep)
    ar_model = lambda x, attention=None: torch.zeros(*x.shape, kernel.vocab_size)  # noqa: E731
    assert AutoregressiveObjective.bound_names() == tuple(AutoregressiveObjective().bound_estimates(ar_model, x0, real))
