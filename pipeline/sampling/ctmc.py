"""``ctmc``: tau-leaping on the model's reverse rates with Campbell et al.'s predictor-corrector, any kernel.

The model's generative rates are the posterior mixture of the conditional path's reverse rates
(docs/likelihood.md Sec 6, the same rates as the continuous-time ELBO, one implementation:
``pipeline.core.ct_elbo.conditional_reverse_rates``):

    Rhat_t(z -> y) = sum_v w_v Rbar^v_t(z -> y),   w = p_theta(. | x_t) restricted to q_t(z | v) > 0.

Predictor (one leap t -> s = t - dt, every position independently, the network evaluated once at t
as in all tau-leaping): a mixture of rates is simulated by drawing its component, v ~ w, then the
component's jump. Given v the position leaves z with hazard [pdot_v(z)]_+ / q_tau(z | v):

* ``hazard="integrated"`` (default): the hazard integrated exactly over the leap (the network stays
  frozen, the analytic part does not): P(jump) = 1 - q_s(z | v) / q_t(z | v) where q(z | v) grows
  with t. For ``mask`` this is MDLM's ancestral step exactly, (alpha_s - alpha_t) / (1 - alpha_t).
  The destination is drawn from the rates at the leap's midpoint.
* ``hazard="frozen"``: plain tau-leaping, P(jump) = 1 - exp(-dt [pdot_v(z)]_+ / q_t(z | v)).

At most one jump per position per leap (a categorical state cannot add jumps; Campbell et al.
reject a dimension with several proposals, we keep the first): the destination y ~ Rbar^v(z -> .)
among {v} u N(v). At s = 0 the conditional path ends at v, so the last leap lands on v.

Corrector (Campbell et al. 2022 Sec 4), ``corrector_steps`` moves at the fixed time s after each
predictor leap: the rates Rbar^v + F^v of the reverse and the forward conditional CTMC, whose
stationary law is q_s(. | v) for each v (detailed balance: q(z|v) F^v(z -> y) = q(y|v) Rbar^v(y -> z)),
hence the model's marginal at s for an exact posterior. Out of z the rate is |pdot_v(z)| / q_s(z | v)
(reverse if z gains mass, forward if it loses). A move is the uniformised (Euler) kernel I + h G^v with
h = min(``corrector_step_size * dt``, 1 / max_z exit rate of G^v): linear in the rates, so each
q_s(. | v) stays exactly invariant, and h depends on v alone, so the mixture over v keeps the model's
marginal (tested on the toy: a tau-leap with 1 - exp(-h rate) or a clipped probability does not).
Forward destinations: the row entries with pdot_v(y) > 0 and, with the global branch's weight
beta'_s nu(outside the row), a draw from nu outside the row (by rejection).

``chain``: which CTMC realises the kernel's marginals (docs/likelihood.md Sec 6.7). ``flux`` is the
chain above. ``resampling`` (SemDLM+ and uniform, the default there through ``auto``: the chain whose bound
the evaluation reports, ``resampled_continuous`` / UDLM's): given v, a position leaves z by a resampling draw at
rate rho nu(z) / q_t(z | v), rho = beta' / (1 - beta), landing on y ~ q_t(. | v) (possibly z itself: a
no-op, which is the same law as the off-diagonal rates), or by the flux of the remainder
r_v = (alpha' + rho alpha, Lambda' + rho Lambda) on v's row at rate [r_v(z)]_+ / q_t(z | v), landing on
y with probability proportional to [-r_v(y)]_+. A leap uses the rates at its midpoint (``integrated``)
or at t (``frozen``), P(jump) = 1 - exp(-dt rate). Its corrector adds the forward chain (a draw from nu
at rate rho, the flux [-r_v(z)]_+ [r_v(y)]_+ / (S q_s(z | v))), again q_s(. | v)-reversible.
All draws are float64.
"""
from __future__ import annotations

import torch

from pipeline.core.ct_elbo import ConditionalRates, conditional_reverse_rates
from pipeline.core.ct_resample import remainder_rows, resampling_applies, resampling_rate
from pipeline.core.ct_tables import TimeTables, time_tables

from .base import CHAINS, Denoiser, initial_block, time_grid
from .draws import categorical, truncate
from .tau_leaping import restricted_weights

HAZARDS = ("integrated", "frozen")
_T_EDGE = 1e-6  # rates are evaluated at t <= 1 - _T_EDGE (d/dt at t = 1 would be a one-sided derivative)
_REJECTION_TRIES = 32  # draws of nu outside a row; nu(row) is small, 32 misses in a row ~never happen


_MEMO_SIZE = 8  # time values kept per kernel: a leap needs t, its midpoint and s; the next leap's t is this s


def _memo(kernel, key, compute):
    """``compute()`` memoised per kernel for the last few keys: schedule values at one float time.

    A leap evaluates the schedules at t, (t + s) / 2 and s, its corrector again at s, and the next leap
    starts at that s: without the memo a leap computes 4 time tables, with it 2. Each costs a few
    forward-mode derivatives of the schedules (~5 ms on CPU, more than the O(N K) rates of a block);
    a memoised value is the tensor a fresh call would return, bit for bit.
    """
    memo = kernel.__dict__.setdefault("_ctmc_memo", {})
    if key not in memo:
        if len(memo) >= _MEMO_SIZE:
            memo.pop(next(iter(memo)))  # oldest first
        memo[key] = compute()
    return memo[key]


def _tables_at(kernel, t: float, device) -> TimeTables:
    t = float(t)
    return _memo(kernel, ("tables", t, str(device)),
                 lambda: time_tables(kernel, torch.full((1,), t, dtype=torch.float64, device=device)))


def _branch_derivatives(kernel, s: float):
    """kernel.branch_weights_and_derivatives at the float time s (memoised)."""
    s = float(s)
    return _memo(kernel, ("branch", s),
                 lambda: kernel.branch_weights_and_derivatives(torch.tensor(s, dtype=torch.float64)))


def _rates_at(kernel, t: float, z: torch.Tensor, v: torch.Tensor) -> ConditionalRates:
    return conditional_reverse_rates(kernel, _tables_at(kernel, t, z.device), torch.zeros_like(z), z, v)


def resolve_chain(kernel, chain: str) -> str:
    """``flux`` or ``resampling`` for ``kernel`` (``auto``: the resampling chain where it applies: SemDLM+, and
    uniform, where it is UDLM's chain, the one its reported bound is of; mask keeps MDLM's, the same chain)."""
    if chain not in CHAINS:
        raise ValueError(f"chain must be one of {CHAINS}, got {chain!r}")
    # uniform (the kernel whose bound is UDLM's closed form): the resampling chain is UDLM's own
    applies = resampling_applies(kernel) or (not kernel.cfg.absorbing
                                             and "udlm_continuous" in kernel.cfg.continuous_bounds)
    if chain == "auto":
        return "resampling" if applies else "flux"
    if chain == "resampling" and not applies:
        raise ValueError(f"the resampling chain is for uniform and for kNN kernels with a global branch (SemDLM+), "
                         f"not {kernel.cfg.name!r}: use chain=flux")
    return chain


def _resampling_rates(kernel, t: float, z: torch.Tensor, v: torch.Tensor):
    """(flux-chain rates of (z, v) for q and the row, rho, the remainder r on v's row [1 + K] (the same row for
    every v), r_v(z) [N], the resampling hazard rho nu(z) / q_t(z | v) [N], the flux hazard [r_v(z)]_+ / q [N])."""
    own = _rates_at(kernel, t, z, v)
    tab = _tables_at(kernel, t, z.device)
    rho_t = resampling_rate(tab.beta, tab.dbeta)  # [1]: one t
    _, r_row, _ = remainder_rows(tab, kernel, torch.zeros(1, dtype=torch.long, device=z.device), rho_t)
    r_row, rho = r_row[0], float(rho_t)
    r_z = (r_row * (own.targets == z.unsqueeze(-1))).sum(-1)
    q = own.q.clamp_min(1e-300)
    return own, rho, r_row, r_z, rho * kernel.global_dist.index_select(0, z) / q, r_z.clamp_min(0.0) / q


def _draw_from_marginal(kernel, v: torch.Tensor, t: float, generator) -> torch.Tensor:
    """y ~ q_t(. | v) per entry of v."""
    return kernel.sample_xt(v, torch.full(v.shape, float(t), dtype=torch.float64, device=v.device),
                            generator=generator)[0]


def _resampling_predictor(kernel, v, z, t: float, s: float, hazard: str, generator) -> torch.Tensor:
    tm = 0.5 * (t + s) if hazard == "integrated" else min(t, 1.0 - _T_EDGE)
    own, _, r_row, _, res, flux = _resampling_rates(kernel, tm, z, v)
    u = torch.rand(z.shape, generator=generator, device=z.device, dtype=torch.float64)
    jump = torch.nonzero(u < -torch.expm1(-(t - s) * (res + flux))).flatten()
    out = z.clone()
    if jump.numel():
        by_res = torch.rand(jump.shape, generator=generator, device=z.device, dtype=torch.float64) * (
            res[jump] + flux[jump]) < res[jump]
        j_res, j_flux = jump[by_res], jump[~by_res]
        if j_res.numel():
            out[j_res] = _draw_from_marginal(kernel, v[j_res], tm, generator)
        if j_flux.numel():
            out[j_flux] = _pick(own.targets.index_select(0, j_flux),
                                (-r_row).clamp_min(0.0).expand(j_flux.numel(), -1), generator)
    return out


def _resampling_corrector(kernel, v, z, s: float, step: float, generator) -> torch.Tensor:
    """A uniformised move with the reverse and forward resampling chains' rates (q_s(. | v)-reversible)."""
    s_eval = min(s, 1.0 - _T_EDGE)
    own, rho, r_row, r_z, res, flux = _resampling_rates(kernel, s_eval, z, v)
    q = own.q.clamp_min(1e-300)
    rates = torch.stack([res, flux, torch.full_like(res, rho), (-r_z).clamp_min(0.0) / q], -1)  # [N, 4]
    # the largest exit rate of v's chain: its row's states, and those only the global branch reaches
    b = float(_branch_derivatives(kernel, s_eval)[0][1])
    ok = own.target_q > 0
    row = torch.where(ok, (rho * kernel.global_dist[own.targets] + r_row.abs()) / torch.where(ok, own.target_q, 1.0),
                      0.0).amax(-1)
    top = (row.clamp_min(rho / b if b > 0 else 0.0) + rho).clamp_min(1e-12)
    step_v = torch.minimum(torch.full_like(top, step), 1.0 / top)
    total = rates.sum(-1)
    u = torch.rand(z.shape, generator=generator, device=z.device, dtype=torch.float64)
    move = torch.nonzero(u < step_v * total).flatten()
    out = z.clone()
    if not move.numel():
        return out
    kind = categorical(rates.index_select(0, move), generator)
    for k, idx in enumerate(move[kind == k] for k in range(4)):
        if not idx.numel():
            continue
        if k == 0:  # reverse resampling: y ~ q_s(. | v)
            out[idx] = _draw_from_marginal(kernel, v[idx], s_eval, generator)
        elif k == 2:  # forward resampling: y ~ nu
            out[idx] = kernel._sample_global(idx.numel(), generator)
        else:  # the remainder's flux: into the losing states (reverse) or the gaining ones (forward)
            w = (-r_row if k == 1 else r_row).clamp_min(0.0).expand(idx.numel(), -1)
            out[idx] = _pick(own.targets.index_select(0, idx), w, generator)
    return out


def draw_clean_tokens(kernel, probs: torch.Tensor, z: torch.Tensor, t: float, generator=None,
                      greedy: bool = False) -> torch.Tensor:
    """v ~ p_theta(v | x_t) restricted to q_t(z | v) > 0 (argmax if ``greedy``), [N]; probs [N, V] float64.

    Where the global branch reaches z every v is allowed and the draw is a plain categorical; the
    rest (e.g. a revealed token under ``mask``) restrict to the q_t(z | .) > 0 of their row.
    """
    beta = float(kernel.branch_weights(torch.tensor(float(t), dtype=torch.float64))[1])
    generic = (kernel.global_dist.index_select(0, z) * beta) > 0
    v = torch.empty_like(z)
    for rows, restrict in ((generic, False), (~generic, True)):
        idx = torch.nonzero(rows).flatten()
        if not idx.numel():
            continue
        w = probs.index_select(0, idx)
        if restrict:
            w = restricted_weights(w, kernel.likelihood_of(z.index_select(0, idx), t))
        v[idx] = w.argmax(-1) if greedy else categorical(w, generator)
    return v


def _pick(targets: torch.Tensor, weights: torch.Tensor, generator) -> torch.Tensor:
    return targets.gather(-1, categorical(weights, generator).unsqueeze(-1)).squeeze(-1)


def predictor_step(kernel, probs: torch.Tensor, z: torch.Tensor, t: float, s: float, hazard: str = "integrated",
                   generator=None, greedy: bool = False, chain: str = "flux") -> torch.Tensor:
    """One leap t -> s of N positions z [N] given p_theta ``probs`` [N, V] (float64); returns the new z."""
    v = draw_clean_tokens(kernel, probs, z, t, generator, greedy)
    if s <= 0.0:  # q_0(. | v) = delta_v: the conditional path ends at v
        return v
    if resolve_chain(kernel, chain) == "resampling":
        if hazard not in HAZARDS:
            raise ValueError(f"hazard must be one of {HAZARDS}, got {hazard!r}")
        return _resampling_predictor(kernel, v, z, t, s, hazard, generator)
    if hazard == "integrated":  # jump probability exact; destinations from the rates at the leap's midpoint
        own = _rates_at(kernel, 0.5 * (t + s), z, v)
        q_t, q_s = _rates_at(kernel, t, z, v).q, _rates_at(kernel, s, z, v).q
        p_jump = torch.where(own.total > 0, (1.0 - q_s / q_t.clamp_min(1e-300)).clamp(0.0, 1.0), 0.0)
    elif hazard == "frozen":  # rates at t (just inside t = 1, where the schedules' derivatives are one-sided)
        own = _rates_at(kernel, min(t, 1.0 - _T_EDGE), z, v)
        p_jump = -torch.expm1(-(t - s) * own.total)
    else:
        raise ValueError(f"hazard must be one of {HAZARDS}, got {hazard!r}")
    u = torch.rand(z.shape, generator=generator, device=z.device, dtype=torch.float64)
    jump = torch.nonzero(u < p_jump).flatten()
    out = z.clone()
    if jump.numel():
        out[jump] = _pick(own.targets.index_select(0, jump), own.rates.index_select(0, jump), generator)
    return out


def _draw_outside_rows(kernel, rows: torch.Tensor, generator) -> torch.Tensor:
    """y ~ nu restricted to the complement of each row [M, R] (rejection; a row that misses every try keeps
    its last draw, which then lies in the row: probability nu(row)^32)."""
    y = kernel._sample_global(rows.shape[0], generator)
    for _ in range(_REJECTION_TRIES):
        inside = (rows == y.unsqueeze(-1)).any(-1)
        if not bool(inside.any()):
            break
        y = torch.where(inside, kernel._sample_global(rows.shape[0], generator), y)
    return y


def _max_exit_rate(kernel, own: ConditionalRates, s: float) -> torch.Tensor:
    """max over states z of |pdot_v(z)| / q_s(z | v), per position's v: the row entries, and beta'/beta for
    the states only the global branch reaches. A move of length 1 / this keeps every jump probability
    <= 1, so the uniformised kernel I + step G^v is exact and q_s(. | v)-reversible."""
    (_, b, _), (_, db, _) = _branch_derivatives(kernel, s)
    ok = own.target_q > 0
    rows = torch.where(ok, own.target_qdot.abs() / torch.where(ok, own.target_q, 1.0), 0.0).amax(-1)
    generic = float(db.abs() / b) if float(b) > 0 else 0.0
    return rows.clamp_min(generic).clamp_min(1e-12)


def corrector_step(kernel, probs: torch.Tensor, z: torch.Tensor, s: float, step: float, generator=None,
                   chain: str = "flux") -> torch.Tensor:
    """One corrector move of length ``step`` at the fixed time s with rates Rbar^v + F^v (see the module)."""
    v = draw_clean_tokens(kernel, probs, z, s, generator)
    if resolve_chain(kernel, chain) == "resampling":
        return _resampling_corrector(kernel, v, z, s, step, generator)
    s_eval = min(s, 1.0 - _T_EDGE)
    own = _rates_at(kernel, s_eval, z, v)
    rate = own.qdot.abs() / own.q.clamp_min(1e-300)
    step_v = torch.minimum(torch.full_like(rate, step), 1.0 / _max_exit_rate(kernel, own, s_eval))
    u = torch.rand(z.shape, generator=generator, device=z.device, dtype=torch.float64)
    move = u < step_v * rate
    out = z.clone()
    back = torch.nonzero(move & (own.qdot > 0)).flatten()  # reverse: towards v's row
    if back.numel():
        out[back] = _pick(own.targets.index_select(0, back), own.rates.index_select(0, back), generator)
    fwd = torch.nonzero(move & (own.qdot < 0)).flatten()  # forward: away from v, into its row or nu
    if fwd.numel():
        targets, gain = own.targets.index_select(0, fwd), own.target_qdot.index_select(0, fwd).clamp_min(0.0)
        db = _branch_derivatives(kernel, s)[1][1]
        outside = float(db) * (1.0 - kernel.global_dist[targets].sum(-1)).clamp_min(0.0)  # beta' nu(outside row)
        choice = categorical(torch.cat([gain, outside.unsqueeze(-1)], -1), generator)
        y = targets.gather(-1, choice.clamp_max(targets.shape[-1] - 1).unsqueeze(-1)).squeeze(-1)
        far = choice == targets.shape[-1]
        if bool(far.any()):
            y[far] = _draw_outside_rows(kernel, targets[far], generator)
        out[fwd] = y
    return out


@torch.no_grad()
def denoise_block_ctmc(den: Denoiser, prefix: torch.Tensor, block_len: int, steps: int,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Generate one block [B, block_len] after the clean ``prefix`` [B, P] (predictor + corrector leaps)."""
    kernel, cfg = den.kernel, den.cfg
    B, P = prefix.shape
    block = initial_block(kernel, B, block_len, prefix.device, generator, den, P)
    free = den.free(P, block_len)
    # Fixed (prompt / infill) tokens never enter the rates: under ``mask`` a clean token has no
    # probability at t = 1, so its clean-token weights would be 0 / 0.
    keep = None if free is None else torch.nonzero(free.reshape(-1)).flatten()

    def move(step_fn, block, probs, *args, **kwargs):
        z, p = block.reshape(-1), probs.reshape(-1, kernel.vocab_size)
        if keep is None:
            return step_fn(kernel, p, z, *args, **kwargs).reshape(B, block_len)
        out = z.clone()
        if keep.numel():
            out[keep] = step_fn(kernel, p.index_select(0, keep), z.index_select(0, keep), *args, **kwargs)
        return out.reshape(B, block_len)

    chain = resolve_chain(kernel, cfg.chain)
    grid = time_grid(steps)
    for j, (t, s) in enumerate(grid):
        probs = truncate(den.probs(torch.cat([prefix, block], 1), t, start=P), cfg.top_k, cfg.top_p)
        last = j == len(grid) - 1
        block = move(predictor_step, block, probs, t, s, cfg.hazard, generator, greedy=last and cfg.final_argmax,
                     chain=chain)
        for _ in range(cfg.corrector_steps if s > 0 else 0):
            probs = truncate(den.probs(torch.cat([prefix, block], 1), s, start=P), cfg.top_k, cfg.top_p)
            block = move(corrector_step, block, probs, s, cfg.corrector_step_size * (t - s), generator, chain=chain)
    return block
