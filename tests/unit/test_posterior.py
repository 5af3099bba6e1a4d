"""The kernel-aware parameterisation and the change-aware correction against exact answers (posterior.py)."""
import math

import pytest
import torch

from pipeline.core import ct_dense, ct_elbo
from pipeline.core.objectives import LossConfig
from pipeline.core.posterior import (
    PLAIN,
    PosteriorConfig,
    Reading,
    change_log_ratio,
    clean_score_logits,
    clean_support_mask,
    decode_support,
    encode_support,
    log_posterior,
    make_reading,
)
from pipeline.research import bound_check as bc

KERNELS = ["uniform", "semdlm", "semdlm_softmax", "semdlm_plus", "semdlm_plus_eq118"]
READINGS = [Reading(False, 0.0), Reading(True, 0.0), Reading(True, math.log(10.0)), Reading(False, math.log(10.0)),
            Reading(False, math.log(10.0), 0)]  # the last: a model without a support bias ([MASK] = 0 excluded)


def _small(kernel, **kw):
    return bc.build_toy(kernel, vocab=20, k_max=4, valid=17, seed=3, **kw)


def _random_case(toy, n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    V = toy.kernel.vocab_size
    x0 = toy.valid_ids[torch.randint(toy.valid_ids.numel(), (n,), generator=g)].unsqueeze(1)
    t = torch.rand(n, generator=g, dtype=torch.float64).clamp(1e-3, 0.999)
    xt, _ = toy.kernel.sample_xt(x0, t, generator=g)
    logits = torch.randn(n, 1, V, generator=g, dtype=torch.float64) * 2
    return x0, xt, t, logits


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("reading", READINGS, ids=["plain", "kernel", "kernel+corr", "direct+corr", "legacy+corr"])
def test_sparse_integrand_and_nll_equal_the_dense_reading(kernel, reading):
    toy = _small(kernel)
    x0, xt, t, logits = _random_case(toy)
    sparse = ct_elbo.ctelbo_per_token(toy.kernel, logits, x0, xt, t, reading=reading).squeeze(1)
    nll = ct_elbo.posterior_nll_per_token(toy.kernel, logits, x0, xt, t, reading=reading).squeeze(1)
    for i in range(0, x0.shape[0], 37):
        ti = float(t[i])
        dense = ct_dense.ctelbo_integrand_dense(toy.kernel, logits[i], x0[i], xt[i], ti, reading=reading)
        assert float(sparse[i]) == pytest.approx(float(dense), rel=1e-9, abs=1e-9)
        logp = log_posterior(reading, toy.kernel, logits[i], xt[i], ti)
        assert float(nll[i]) == pytest.approx(-float(logp[0, x0[i, 0]]), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("kernel", ["uniform", "semdlm", "semdlm_plus"])
def test_readings_are_differentiable_with_a_support_bias(kernel):
    """-inf logits where the model's support excludes a token (x_t may still land there): finite gradients."""
    toy = _small(kernel)
    x0, xt, t, logits = _random_case(toy, 200)
    x0 = x0.clamp_min(5)
    xt, _ = toy.kernel.sample_xt(x0, t, generator=torch.Generator().manual_seed(1))
    logits = logits.float()
    logits[..., :5] = -math.inf
    logits.requires_grad_(True)
    for reading in READINGS[1:]:
        for fn in (ct_elbo.ctelbo_per_token, ct_elbo.posterior_nll_per_token):
            val = fn(toy.kernel, logits, x0, xt, t, reading=reading).sum()
            (grad,) = torch.autograd.grad(val, logits)
            assert torch.isfinite(val) and torch.isfinite(grad).all(), (reading, fn.__name__)


@pytest.mark.parametrize("kernel", KERNELS)
def test_f_is_the_posterior_over_q_and_mask_is_subs(kernel):
    toy = _small(kernel)
    z = torch.arange(toy.kernel.vocab_size)
    for t in (1e-4, 0.3, 0.9):
        post = log_posterior(PLAIN, toy.kernel, toy.denoiser(z, t), z, t)
        via_f = log_posterior(Reading(True), toy.kernel, toy.clean_scores(z, t), z, t)
        assert torch.allclose(post.exp(), via_f.exp(), atol=1e-12)
    mask = bc.build_toy("mask", vocab=20, k_max=4, valid=17, seed=3)
    logits = torch.randn(20, 20, dtype=torch.float64)
    for t in (0.01, 0.5):
        subs = log_posterior(PLAIN, mask.kernel, logits, z, t).exp()
        aware = log_posterior(Reading(True), mask.kernel, logits, z, t).exp()
        assert torch.allclose(subs, aware, atol=1e-15) and float(aware[:, 0].max()) == 0.0  # 0 = [MASK]


def test_the_guard_where_no_possible_clean_token_has_mass():
    toy = _small("semdlm")
    z = torch.arange(toy.kernel.vocab_size)
    logits = torch.zeros(z.numel(), z.numel(), dtype=torch.float64)
    logits[:, toy.valid_ids] = -math.inf  # all mass where q_t(z | v) may be 0
    p = log_posterior(Reading(True), toy.kernel, logits, z, 1.0).exp()
    lik = toy.kernel.likelihood_of(z, 1.0)
    possible = lik.sum(-1) > 0
    assert not torch.isnan(p).any()
    assert torch.allclose(p[possible].sum(-1), torch.ones(int(possible.sum()), dtype=torch.float64))
    assert float(p[~possible].abs().sum()) == 0.0


@pytest.mark.parametrize("kernel", ["uniform", "semdlm_plus"])
def test_toy_bounds_posterior_tilted_corrected(kernel):
    """The kernel reading with the exact f gives today's posterior bound; Eq 120's optimum is looser, and
    the correction gives the posterior's bound back exactly; reading posterior logits as f counts q twice."""
    toy = _small(kernel)
    exact = bc.ctelbo_exact(toy)
    for par in ("kernel", "direct"):
        values = {w: bc.ctelbo_exact(toy, model=m, reading=r)
                  for w, (m, r) in ((w, bc.toy_denoiser(toy, w, par)) for w in bc.DENOISERS)}
        assert values["posterior"] == pytest.approx(exact, abs=1e-9)
        assert values["corrected"] == pytest.approx(exact, abs=1e-9)
        assert values["tilted"] > exact + 0.3
    twice = bc.ctelbo_exact(toy, model=toy.denoiser, reading=Reading(True))
    assert twice > exact + 0.5


def test_uniform_udlm_fed_the_converted_posterior_is_its_optimum():
    """UDLM with the direct posterior converted to f (and with f itself) equals UDLM at its optimum p_data."""
    toy = _small("uniform")
    at_optimum = bc.udlm_exact(toy, model=bc.data_denoiser(toy))
    assert bc.udlm_exact(toy, reading=Reading(False)) == pytest.approx(at_optimum, abs=1e-7)
    assert bc.udlm_exact(toy, model=toy.clean_scores, reading=Reading(True)) == pytest.approx(at_optimum, abs=1e-7)
    tilted, corrected = bc.toy_denoiser(toy, "corrected", "kernel")
    assert bc.udlm_exact(toy, model=tilted, reading=corrected) == pytest.approx(at_optimum, abs=1e-7)


def test_clean_score_logits_invert_the_reading():
    toy = _small("semdlm_plus")
    z = toy.valid_ids  # the global branch reaches them: every valid v is possible, f is defined on all
    f = clean_score_logits(PLAIN, toy.kernel, toy.denoiser(z, 0.2), z, 0.2)
    assert torch.allclose(torch.softmax(f[:, toy.valid_ids], -1),
                          torch.softmax(toy.clean_scores(z, 0.2)[:, toy.valid_ids], -1), atol=1e-12)


def test_readings_recorded_and_refused():
    assert make_reading(PosteriorConfig(), "mask", "change_aware", 1.0, 0.1) == Reading(False, 0.0, None)
    r = make_reading(PosteriorConfig(), "semdlm_plus", "change_aware", 1.0, 0.1)
    assert r.kernel_aware and r.log_ratio == pytest.approx(math.log(10.0))
    assert make_reading(PosteriorConfig(change_correction=False), "uniform", "change_aware", 1.0, 0.1).log_ratio == 0
    assert make_reading(PosteriorConfig(), "uniform", "elbo").log_ratio == 0
    with pytest.raises(ValueError, match="lambda_same > 0"):
        change_log_ratio("change_aware", 1.0, 0.0)
    with pytest.raises(ValueError, match="parameterization"):
        PosteriorConfig(parameterization="subs")
    assert LossConfig().lambda_same > 0


def test_clean_support_modes_and_record_round_trip():
    counts = torch.tensor([0, 5, 0, 3, 0, 7]).numpy()
    assert clean_support_mask("all", counts).all()
    assert clean_support_mask("observed", counts).tolist() == [False, True, False, True, False, True]
    special = clean_support_mask("special", counts, special_ids=[0, 1], placeholder_ids=[4])
    assert special.tolist() == [False, True, True, True, False, True]  # 1 is in the data: kept
    rec = encode_support(special)
    assert decode_support(rec).tolist() == special.tolist() and rec["excluded"] == 2
    with pytest.raises(ValueError):
        decode_support({**rec, "excluded": 3})


def test_an_export_records_its_reading_and_every_reader_follows_it(tmp_path):
    """save_export -> load_export: the support bias and the reading come back; the sampler's denoiser and the
    evaluation's objective read through them; an export without a record is read as before."""
    from pipeline.common.export_artifact import load_export, save_export
    from pipeline.core.kernels import KernelConfig
    from pipeline.core.model import ModelConfig, build_model
    from pipeline.core.objectives import build_objective
    from pipeline.core.posterior import posterior_record
    from pipeline.sampling.base import Denoiser, SamplerConfig

    V = 64
    cfg = ModelConfig.preset("tiny", vocab_size=V)
    tokenizer = {"identity": "vocab-sha256:abc", "name_or_path": "default", "vocab_size": V,
                 "special_ids": {"mask": 3, "pad": 0}}
    torch.manual_seed(0)
    model = build_model(cfg)
    support = torch.ones(V, dtype=torch.bool)
    support[[0, 3, 7]] = False
    reading = make_reading(PosteriorConfig(), "uniform", "change_aware", 1.0, 0.1)
    save_export(tmp_path / "new", model, cfg, KernelConfig.preset("uniform"), tokenizer, {}, "diffusion",
                posterior=posterior_record(PosteriorConfig(), reading, support.numpy()))
    save_export(tmp_path / "old", model, cfg, KernelConfig.preset("uniform"), tokenizer, {}, "diffusion")
    new, old = load_export(tmp_path / "new"), load_export(tmp_path / "old")
    assert new.reading == reading and new.model.posterior_reading == reading
    assert old.reading == Reading(False, 0.0, 3)  # no record: the raw softmax, [MASK] never clean
    x = torch.randint(1, V, (2, 8))
    t = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        logits = new.model(x, t)
        assert torch.isinf(logits[..., [0, 3, 7]]).all() and torch.isfinite(logits[..., support]).all()
        assert torch.isfinite(old.model(x, t)).all()
        den = Denoiser(new.model, new.kernel, SamplerConfig(method="ctmc", seq_len=8, steps=2, strides=1))
        probs = den.probs(x, t, 0)
    expected = log_posterior(reading, new.kernel, logits, x, t.double()).exp().reshape(probs.shape)
    assert torch.allclose(probs, expected) and float(probs[..., [0, 3, 7]].abs().max()) == 0.0
    objective = build_objective(new.kernel, reading=new.reading)
    assert "ctelbo_continuous_uncorrected" in objective.bound_names()


@pytest.mark.parametrize("kernel", ["uniform", "semdlm_plus"])
def test_bounds_of_a_legacy_reading_never_read_mask_as_clean(kernel):
    """A reading that names [MASK] (no support bias) gives every bound, corrected and not, as if the logits
    had -inf there: the exclusion is made once, before UDLM's pass and the conditional-path ELBO share it."""
    from pipeline.core.likelihood import continuous_bound_estimates

    toy = _small(kernel)
    g = torch.Generator().manual_seed(4)
    x0 = toy.valid_ids[torch.randint(toy.valid_ids.numel(), (6, 5), generator=g)]
    t = torch.tensor([0.05, 0.2, 0.4, 0.6, 0.8, 0.95])
    w = torch.randn(20, 20, generator=g, dtype=torch.float64)
    model = lambda xt, tt: w[xt] * (1 + tt[:, None, None])  # noqa: E731
    masked = lambda xt, tt: model(xt, tt).index_fill(-1, torch.tensor([0]), -math.inf)  # noqa: E731
    ratio = math.log(10.0)
    got = continuous_bound_estimates(toy.kernel, model, x0, t, generator=torch.Generator().manual_seed(9),
                                     reading=Reading(False, ratio, 0))
    want = continuous_bound_estimates(toy.kernel, masked, x0, t, generator=torch.Generator().manual_seed(9),
                                      reading=Reading(False, ratio))
    assert set(got) == set(want) and any("uncorrected" in k for k in got)
    for name in got:
        torch.testing.assert_close(got[name], want[name], rtol=1e-9, atol=1e-9)
