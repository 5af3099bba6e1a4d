"""The ctmc sampler against exact answers: a toy whose denoiser is the exact posterior (sampler_oracle)."""
import re

import pytest
import torch

from pipeline import sampler_oracle as sampler_oracle_cli
from pipeline.research import sampler_oracle
from pipeline.research.sampler_oracle import build_sequence_toy, oracle_tv
from pipeline.sampling.base import SamplerConfig
from pipeline.sampling.ctmc import corrector_step, predictor_step
from pipeline.sampling.generate import generate

KERNELS = ["mask", "uniform", "semdlm_plus"]
N = 8000


@pytest.fixture(scope="module", params=KERNELS)
def toy(request):
    return build_sequence_toy(request.param, vocab=5, k_max=2, length=2, seed=0)


def test_tv_falls_with_steps_and_reaches_the_noise_floor(toy):
    floor = toy.noise_floor(N, 0)
    coarse, _ = oracle_tv(toy, "ctmc", 2, N, seed=1, corrector_steps=0)
    fine, calls = oracle_tv(toy, "ctmc", 64, N, seed=1, corrector_steps=0)
    assert calls == 64
    assert coarse > 2 * floor, (coarse, floor)  # 2 steps are visibly off
    assert fine < 1.6 * floor, (fine, floor)  # 64 steps: sampling noise only (floor ~0.015 here)


def test_predictor_corrector_reaches_the_noise_floor_too(toy):
    floor = toy.noise_floor(N, 0)
    tv, calls = oracle_tv(toy, "ctmc", 32, N, seed=2, corrector_steps=1)
    assert calls == 2 * 32 - 1  # a corrector call after every predictor leap but the last
    assert tv < 1.6 * floor, (tv, floor)


def test_at_equal_network_calls_the_predictor_alone_is_closer(toy):
    """The finding of docs/sampling.md (issue 14 expected the opposite): 2 leaps + 1 corrector move vs 3
    predictor leaps, 3 network calls each; the predictor alone is closer by more than the noise floor's
    scale on every kernel (measured 0.018-0.025 TV apart here, floor 0.015). If a better corrector
    turns this round, the docs' budget advice (--corrector-steps 0 with twice the steps) must change."""
    pc, pc_calls = oracle_tv(toy, "ctmc", 2, N, seed=4, corrector_steps=1)
    pred, pred_calls = oracle_tv(toy, "ctmc", 3, N, seed=4, corrector_steps=0)
    assert pc_calls == pred_calls == 3
    assert pred < pc - 0.01, (pred, pc)


@pytest.mark.parametrize("kernel", ["uniform", "semdlm_plus", "mask"])
def test_corrector_leaves_the_marginal_invariant(kernel):
    """One position, x_s drawn exactly from q_s, the exact posterior: a long corrector move (10 x dt)
    keeps the law of x_s (the uniformised kernel is q_s(.|v)-reversible for every v)."""
    toy = build_sequence_toy(kernel, vocab=6, k_max=2, length=1, seed=3)
    V, s, n = toy.kernel.vocab_size, 0.4, 200_000
    g = torch.Generator().manual_seed(0)
    x0 = toy.states[torch.multinomial(toy.p_data, n, replacement=True, generator=g)]
    xs, _ = toy.kernel.sample_xt(x0, torch.full((n,), s), generator=g)
    exact = toy.p_data @ toy.kernel.marginal_rows(toy.states[:, 0], s)  # [V] law of x_s

    def tv(x):
        return 0.5 * float((torch.bincount(x.reshape(-1), minlength=V).double() / n - exact).abs().sum())

    before = tv(xs)
    x = xs.reshape(-1)
    for _ in range(3):
        probs = torch.softmax(toy(x.reshape(n, 1), torch.full((n,), s)).double(), -1).reshape(-1, V)
        x = corrector_step(toy.kernel, probs, x, s, step=1.0, generator=g)
    assert (x != xs.reshape(-1)).float().mean() > 0.05  # it does move
    assert tv(x) < before + 0.004, (before, tv(x))  # sampling noise of 200k draws ~0.002


def test_integrated_hazard_on_mask_is_mdlms_ancestral_step():
    toy = build_sequence_toy("mask", vocab=5, k_max=2, length=1, seed=0)
    k, n, t, s = toy.kernel, 200_000, 0.7, 0.45
    z = torch.full((n,), k.mask_id)
    probs = torch.softmax(toy(z.reshape(n, 1), torch.full((n,), t)).double(), -1).reshape(n, -1)
    out = predictor_step(k, probs, z, t, s, "integrated", torch.Generator().manual_seed(0))
    revealed = float((out != k.mask_id).double().mean())
    a_t, a_s = float(k.alpha(t)), float(k.alpha(s))
    want = (a_s - a_t) / (1 - a_t)
    assert abs(revealed - want) < 4 * (want * (1 - want) / n) ** 0.5, (revealed, want)
    assert bool((out[out != k.mask_id] != 0).all())  # revealed tokens are clean tokens


def test_final_argmax_takes_the_mode_of_p_theta():
    toy = build_sequence_toy("uniform", vocab=5, k_max=2, length=2, seed=0)  # every x_t allows every v
    logits = torch.tensor([-9.0, 0.5, 0.0, 0.2, 0.1])  # mode: token 1, but only ~30% of the mass

    def model(x, t):
        return logits.expand(*x.shape, 5).clone()

    cfg = SamplerConfig(method="ctmc", steps=4, seq_len=2, strides=1)
    ids, _ = generate(model, toy.kernel, cfg, 400, torch.Generator().manual_seed(0))
    assert 0.15 < float((ids == 1).double().mean()) < 0.6  # a draw, not the mode
    greedy = SamplerConfig(method="ctmc", steps=4, seq_len=2, strides=1, final_argmax=True)
    ids, _ = generate(model, toy.kernel, greedy, 400, torch.Generator().manual_seed(0))
    assert bool((ids == 1).all())


def test_invalid_ctmc_options_are_refused():
    with pytest.raises(ValueError, match="hazard"):
        SamplerConfig(method="ctmc", hazard="euler")
    with pytest.raises(ValueError, match="corrector_step_size"):
        SamplerConfig(method="ctmc", corrector_step_size=0.0)


def test_oracle_tool_prints_the_table_and_a_last_line(capsys):
    sampler_oracle_cli.main(["--kernel", "uniform", "--methods", "ctmc,blockwise", "--steps", "2,8",
                         "--samples", "500", "--vocab", "4", "--length", "2"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1].startswith("| method |") and lines[3].startswith("| ctmc |")
    pattern = r"ctmc_tv=\d\.\d{4} blockwise_tv=\d\.\d{4} floor=\d\.\d{4} tilted_tv=\d\.\d{4} corrected_tv=\d\.\d{4}"
    assert re.fullmatch(pattern, lines[-1]), lines[-1]


@pytest.mark.parametrize("parameterization", ["kernel", "direct"])
def test_ctmc_fed_the_corrected_eq120_optimum_samples_the_data(parameterization):
    """Eq 120's exact optimum drives the ctmc sampler off the data; corrected, it is the posterior's sampler
    (TV within the noise floor + 0.02), and the posterior given as f samples as the posterior does."""
    toy = sampler_oracle.build_sequence_toy("semdlm_plus", vocab=5, k_max=2, length=2, seed=0)
    n = 6000
    floor = toy.noise_floor(n, 0)
    denoisers = {w: sampler_oracle.toy_denoiser(toy, w, parameterization) for w in ("posterior", "tilted", "corrected")}
    tv = {w: sampler_oracle.oracle_tv(toy, "ctmc", 32, n, model=m)[0] for w, m in denoisers.items()}
    assert tv["posterior"] <= floor + 0.02 and tv["corrected"] <= floor + 0.02, (tv, floor)
    assert tv["tilted"] > floor + 0.05, (tv, floor)


@pytest.mark.parametrize("kernel", ["semdlm_plus", "uniform"])
@pytest.mark.parametrize("chain", ["flux", "resampling"])
def test_both_chains_reach_the_noise_floor(kernel, chain):
    """The resampling chain (docs/likelihood.md 6.7; the default for SemDLM+ and uniform through chain=auto)
    samples the data with the exact posterior as well as the flux chain: predictor alone and with its corrector."""
    toy = build_sequence_toy(kernel, vocab=5, k_max=2, length=2, seed=0)
    floor = toy.noise_floor(N, 0)
    fine, _ = oracle_tv(toy, "ctmc", 64, N, seed=1, corrector_steps=0, chain=chain)
    pc, _ = oracle_tv(toy, "ctmc", 32, N, seed=2, corrector_steps=1, chain=chain)
    coarse, _ = oracle_tv(toy, "ctmc", 2, N, seed=1, corrector_steps=0, chain=chain)
    assert coarse > 2 * floor, (coarse, floor)
    assert fine < 1.6 * floor and pc < 1.6 * floor, (fine, pc, floor)


def test_the_resampling_corrector_leaves_the_marginal_invariant():
    toy = build_sequence_toy("semdlm_plus", vocab=6, k_max=2, length=1, seed=3)
    V, s, n = toy.kernel.vocab_size, 0.4, 200_000
    g = torch.Generator().manual_seed(0)
    x0 = toy.states[torch.multinomial(toy.p_data, n, replacement=True, generator=g)]
    xs, _ = toy.kernel.sample_xt(x0, torch.full((n,), s), generator=g)
    exact = toy.p_data @ toy.kernel.marginal_rows(toy.states[:, 0], s)

    def tv(x):
        return 0.5 * float((torch.bincount(x.reshape(-1), minlength=V).double() / n - exact).abs().sum())

    before, x = tv(xs), xs.reshape(-1)
    for _ in range(3):
        probs = torch.softmax(toy(x.reshape(n, 1), torch.full((n,), s)).double(), -1).reshape(-1, V)
        x = corrector_step(toy.kernel, probs, x, s, step=1.0, generator=g, chain="resampling")
    assert (x != xs.reshape(-1)).float().mean() > 0.05
    assert tv(x) < before + 0.004, (before, tv(x))


def test_chain_auto_is_resampling_for_semdlm_plus_and_uniform():
    from pipeline.sampling.ctmc import resolve_chain
    for kernel, chain in (("semdlm_plus", "resampling"), ("uniform", "resampling"), ("mask", "flux"),
                          ("semdlm", "flux")):
        assert resolve_chain(build_sequence_toy(kernel, vocab=5, k_max=2, length=1).kernel, "auto") == chain
    with pytest.raises(ValueError, match="use chain=flux"):
        resolve_chain(build_sequence_toy("semdlm", vocab=5, k_max=2, length=1).kernel, "resampling")
    with pytest.raises(ValueError, match="chain must be one of"):
        SamplerConfig(chain="markov")
