"""The chunked V-sized row passes the likelihood bounds share (pipeline.core.softmax_rows)."""
import math

import pytest
import torch

from pipeline.core.kernel_config import KernelConfig
from pipeline.core.kernels import alpha_and_derivative, build_kernel
from pipeline.core.likelihood import continuous_bound_estimates, udlm_integrand
from pipeline.core.softmax_rows import logsumexp_rows, sum_log_affine_probs


def _logits(n=70, v=257, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g) * 4


@pytest.mark.parametrize("chunk", [1, 16, 1000])
def test_logsumexp_rows_matches_torch_in_float64(chunk):
    lg = _logits()
    got = logsumexp_rows(lg, chunk=chunk)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, torch.logsumexp(lg.double(), -1), rtol=0, atol=2e-6)


def test_logsumexp_rows_falls_back_where_exp_overflows_or_underflows():
    lg = _logits(6)
    lg[1] += 200.0  # exp overflows float32
    lg[4] -= 200.0  # every exp underflows to 0
    lg.requires_grad_(True)
    got = logsumexp_rows(lg, chunk=4)
    torch.testing.assert_close(got, torch.logsumexp(lg.detach().double(), -1), rtol=1e-7, atol=1e-5)
    got.sum().backward()  # no inf may enter the graph: the gradient is the softmax, finite
    torch.testing.assert_close(lg.grad, torch.softmax(lg.detach(), -1), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shifted", [False, True])
def test_sum_log_affine_probs_matches_the_dense_float64_sum(shifted):
    lg = _logits()
    if shifted:
        lg[::3] += 150.0  # forces the max-shifted path in those chunks
    scale = torch.rand(lg.shape[0], dtype=torch.float64) * 1e4
    shift = torch.rand(lg.shape[0], dtype=torch.float64)
    ref = (torch.softmax(lg.double(), -1) * scale[:, None] + shift[:, None]).log().sum(-1)
    got, lse = sum_log_affine_probs(lg, scale, shift, chunk=16)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-3)
    torch.testing.assert_close(lse, torch.logsumexp(lg.double(), -1), rtol=1e-7, atol=1e-5)
    given, _ = sum_log_affine_probs(lg, scale, shift, lse=lse, chunk=16)  # the caller's logsumexp
    torch.testing.assert_close(given, ref, rtol=1e-6, atol=1e-3)


def test_sum_log_affine_probs_is_differentiable():
    lg = _logits(5, 11).double().requires_grad_(True)
    scale, shift = torch.full((5,), 3.0, dtype=torch.float64), torch.full((5,), 0.5, dtype=torch.float64)
    torch.autograd.gradcheck(lambda x: sum_log_affine_probs(x, scale, shift, chunk=2)[0], (lg,))


def test_udlm_integrand_takes_logits_or_log_probs_and_a_given_lse():
    V = 40
    kernel = build_kernel(KernelConfig.preset("uniform"), V)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randint(0, V, (3, 9), generator=g)
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    xt, _ = kernel.sample_xt(x0, t, generator=g)
    logits = torch.randn(3, 9, V, generator=g, dtype=torch.float64) * 3 + 7.0
    a, da = alpha_and_derivative(kernel.cfg, t)
    from_logits, lse = udlm_integrand(logits, x0, xt, a, da, return_lse=True)
    from_logp = udlm_integrand(torch.log_softmax(logits, -1), x0, xt, a, da)
    with_lse = udlm_integrand(logits, x0, xt, a, da, lse=lse)
    torch.testing.assert_close(from_logits, from_logp, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(from_logits, with_lse, rtol=1e-10, atol=1e-9)
    assert from_logits.shape == x0.shape and torch.isfinite(from_logits).all()


def test_uniform_bounds_share_one_pass_and_equal_separate_calls():
    """continuous_bound_estimates reuses UDLM's logsumexp for the conditional-path ELBO: same numbers."""
    from pipeline.core.ct_elbo import ctelbo_per_token

    V = 50
    kernel = build_kernel(KernelConfig.preset("uniform"), V)
    g = torch.Generator().manual_seed(5)
    x0 = torch.randint(0, V, (4, 6), generator=g)
    t = torch.tensor([0.1, 0.4, 0.7, 0.95])
    w = torch.randn(V, V, generator=g)
    model = lambda xt, tt: w[xt] * (1 + tt[:, None, None])  # noqa: E731
    got = continuous_bound_estimates(kernel, model, x0, t, generator=torch.Generator().manual_seed(9))
    assert list(got) == list(kernel.cfg.continuous_bounds) + ["udlm_converted"]
    xt, _ = kernel.sample_xt(x0, t, generator=torch.Generator().manual_seed(9))
    ct = ctelbo_per_token(kernel, model(xt, t), x0, xt, t).sum(-1)
    torch.testing.assert_close(got["ctelbo_continuous"], ct, rtol=1e-6, atol=1e-6)
    # UDLM fed the converted posterior: the self-shift equals building logits - log q_t(x_t | v) densely
    from pipeline.core.kernels import alpha_and_derivative
    from pipeline.core.likelihood import udlm_integrand
    from pipeline.core.posterior import PLAIN, Reading, clean_score_logits

    a, da = alpha_and_derivative(kernel.cfg, t)
    for reading, name in ((PLAIN, "udlm_converted"),):
        f = clean_score_logits(reading, kernel, model(xt, t).double(), xt, t.double()).reshape(*xt.shape, V)
        dense = udlm_integrand(f, x0, xt, a, da).sum(-1)
        torch.testing.assert_close(got[name], dense, rtol=1e-5, atol=1e-5)
    corr = Reading(True, math.log(7.0))
    got = continuous_bound_estimates(kernel, model, x0, t, generator=torch.Generator().manual_seed(9), reading=corr)
    f = clean_score_logits(corr, kernel, model(xt, t).double(), xt, t.double()).reshape(*xt.shape, V)
    torch.testing.assert_close(got["udlm_continuous"], udlm_integrand(f, x0, xt, a, da).sum(-1), rtol=1e-5, atol=1e-5)
    assert all(math.isfinite(float(v.sum())) for v in got.values())
