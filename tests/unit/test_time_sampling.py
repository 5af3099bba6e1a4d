"""Global-batch stratified time sampling: one t per stratum across ranks and accumulation steps."""
import pytest
import torch

from pipeline.core.time_sampling import (
    TimeSampler,
    TimeSamplerConfig,
    global_indices,
    iid_times,
    step_seed,
    stratified_times,
)


def _union(cfg: TimeSamplerConfig, step: int) -> torch.Tensor:
    sampler = TimeSampler(cfg)
    return torch.cat([sampler.sample(step, rank, accum)
                      for rank in range(cfg.world_size) for accum in range(cfg.accum_steps)])


@pytest.mark.parametrize("world,accum,batch", [(1, 1, 16), (4, 1, 32), (2, 3, 24), (8, 4, 64)])
def test_union_over_ranks_and_micro_steps_is_exactly_stratified(world, accum, batch):
    cfg = TimeSamplerConfig(global_batch=batch, world_size=world, accum_steps=accum, t_min=0.0, base_seed=7)
    for step in range(3):
        t = _union(cfg, step)
        assert t.shape == (batch,)
        strata = torch.floor(t.double() * batch).long()
        assert sorted(strata.tolist()) == list(range(batch))      # one sample per stratum
        # all samples share one offset u0: t - k/N is the same for every sample (mod 1)
        frac = torch.remainder(t.double() * batch, 1.0)
        assert torch.allclose(frac, frac[0].expand_as(frac), atol=1e-4)


def test_each_micro_batch_is_spread_over_the_unit_interval():
    cfg = TimeSamplerConfig(global_batch=32, world_size=4, accum_steps=2, t_min=0.0)
    t = TimeSampler(cfg).sample(step=5, rank=3, accum_step=1)
    strata = torch.floor(t * 4).long()              # 4 local samples -> quarters of [0, 1)
    assert sorted(strata.tolist()) == [0, 1, 2, 3]


def test_offset_changes_between_steps_and_is_shared_by_ranks():
    cfg = TimeSamplerConfig(global_batch=8, world_size=2, t_min=0.0, base_seed=3)
    s = TimeSampler(cfg)
    assert not torch.equal(s.sample(0, 0), s.sample(1, 0))
    assert torch.equal(s.sample(4, 1), TimeSampler(cfg).sample(4, 1))    # reproducible across restarts
    assert step_seed(3, 4) != step_seed(4, 3)
    # offset u0 across many steps covers [0, 1/N) roughly uniformly (not stuck at one phase)
    phases = torch.stack([torch.remainder(s.sample(k, 0)[0] * 8, 1.0) for k in range(400)])
    hist = torch.histc(phases, bins=4, min=0, max=1)
    assert hist.min() > 60


def test_clamping_and_iid_sampler():
    t = stratified_times(seed=1, global_batch=1000, rank=0, world_size=1, accum_step=0, accum_steps=1, t_min=0.05)
    assert t.min() >= 0.05 and t.max() <= 1.0
    assert (t == 0.05).sum() == 50                     # exactly the strata below t_min collapse onto it
    iid = iid_times(4000, torch.Generator().manual_seed(0), t_min=0.0)
    assert abs(iid.mean().item() - 0.5) < 0.02
    # iid leaves strata empty where the stratified sampler never does
    assert len(set(torch.floor(iid[:64] * 64).long().tolist())) < 64
    cfg = TimeSamplerConfig(global_batch=8, world_size=2, antithetic=False)
    assert TimeSampler(cfg).sample(0, 1).shape == (4,)


def test_stratified_estimator_has_lower_variance_than_iid():
    f = lambda t: torch.log1p(10 * t)                  # a smooth integrand, like a bound's t-profile
    strat = torch.stack([f(stratified_times(k, 16, 0, 1, 0, 1, t_min=0.0)).mean() for k in range(200)])
    gen = torch.Generator().manual_seed(0)
    iid = torch.stack([f(iid_times(16, gen, t_min=0.0)).mean() for _ in range(200)])
    assert strat.var() < 0.1 * iid.var()


def test_validation():
    with pytest.raises(ValueError, match="multiple"):
        TimeSamplerConfig(global_batch=10, world_size=4)
    with pytest.raises(ValueError, match="t_min"):
        TimeSamplerConfig(global_batch=8, t_min=1.0)
    with pytest.raises(ValueError, match="out of range"):
        global_indices(4, rank=2, world_size=2, accum_step=0, accum_steps=1)


def test_bound_times_are_unbiased_with_bounded_weights():
    """E_u[w g(t)] = int_0^1 g(max(t, t_min)) dt for an integrand ~1/t and one ~log(1/t); weights <= 1 / m; and
    the weighted 1/t integrand has a finite (small) second moment where uniform t's is of order 1 / t_min."""
    import math

    from pipeline.core.time_sampling import DEFENSIVE_UNIFORM_SHARE, T_MIN, bound_times

    u = (torch.arange(400_000, dtype=torch.float64) + 0.5) / 400_000  # a fine midpoint grid of U(0, 1)
    for g, exact in ((lambda t: 1.0 / t, 1.0 + math.log(1.0 / T_MIN)),
                     (lambda t: torch.log(1.0 / t), 1.0 - T_MIN)):
        for scheme in ("defensive", "uniform"):
            t, w = bound_times(u, scheme)
            assert float((w * g(t)).mean()) == pytest.approx(exact, rel=2e-3), (scheme, exact)
    t, w = bound_times(u, "defensive")
    assert float(w.max()) <= 1.0 / DEFENSIVE_UNIFORM_SHARE + 1e-9 and bool((t >= T_MIN).all())
    second_defensive = float(((w / t) ** 2).mean())
    t_u, _ = bound_times(u, "uniform")
    assert second_defensive < 300 < float((1.0 / t_u ** 2).mean())  # 1 / t_min = 1000 for uniform t
    with pytest.raises(ValueError, match="t sampling"):
        bound_times(u, "beta")
