"""How tight is a kernel's likelihood bound? A context-free toy with an exact NLL and an exact denoiser.

    python -m pipeline.bound_check --kernel semdlm_plus [--vocab 60 --k-max 12 --valid 57 --seed 0]

The toy: a random neighbour table (k_max ranks per row, self excluded), data = one token uniform over
``valid`` tokens (token 0 is [MASK] and invalid), so the true NLL is log(valid); the denoiser is the
exact posterior p(v | x_t) ∝ q_t(x_t | v) p_data(v). Printed: the exact NLL, the T-step bound
(pipeline.core.likelihood.discrete_nelbo) at several T, the continuous-time ELBO of the conditional
path (pipeline.core.ct_elbo) by quadrature and by antithetic Monte-Carlo over t, and UDLM's closed
form for ``uniform``. Small vocabularies enumerate x0 and x_t exactly; large ones (> --exact-max)
use Monte-Carlo over x0, t and x_t (mean ± standard error). Last line:
``exact=<nats> tstep=<nats at the largest T> ctelbo=<nats> tilted=<nats> corrected=<nats>``: the last
two are the continuous-time ELBO with the exact optimum of Eq 120 (the change-aware loss) as the
denoiser, read as it is and with the change-aware correction (pipeline/core/posterior.py), given as f
(``--parameterization kernel``, default) or as the posterior's logits (``direct``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.common.errors import library_not_a_command
from pipeline.core import ct_elbo
from pipeline.core import likelihood as lk
from pipeline.core.kernels import Kernel, KernelConfig, build_kernel
from pipeline.core.objectives import LossConfig
from pipeline.core.posterior import PLAIN, Reading, change_log_ratio, clean_score_logits
from pipeline.core.time_sampling import T_MIN
from pipeline.research import realisation


@dataclass
class Toy:
    kernel: Kernel
    p_data: torch.Tensor  # [V] float64
    valid_ids: torch.Tensor  # [n_valid]

    @property
    def exact_nll(self) -> float:
        return math.log(self.valid_ids.numel())

    def denoiser(self, xt: torch.Tensor, t) -> torch.Tensor:
        """The exact posterior's logits, [..., V]: log q_t(x_t | v) + log p_data(v)."""
        lik = self.kernel.likelihood_of(xt, torch.as_tensor(t, dtype=torch.float64))
        return (lik.log() + self.p_data.log()).nan_to_num(nan=-math.inf)

    def clean_scores(self, xt: torch.Tensor, t) -> torch.Tensor:
        """The kernel-aware parameterisation's exact f: log p_data(v), whatever x_t and t, [..., V]."""
        return self.p_data.log().expand(*xt.shape, -1)


DENOISERS = ("posterior", "tilted", "corrected")


def toy_denoiser(toy: Toy, which: str = "posterior", parameterization: str = "kernel",
                 loss_cfg: LossConfig | None = None) -> tuple:
    """(model(z, t) -> logits, Reading) for the exact denoisers of the toy.

    ``posterior``: the exact optimum of the ELBO / cross-entropy; ``tilted``: the exact optimum of Eq 120
    (``loss_cfg``'s lambdas), p~(v | x_t) ∝ p(v | x_t) (lambda_same if v = x_t else lambda_chg), read
    as it is; ``corrected``: the same logits read with the change-aware correction. ``parameterization``:
    ``kernel`` gives f (the posterior / q_t(x_t | v)), ``direct`` the posterior's own logits.
    """
    kernel_aware = parameterization == "kernel"
    return eq120_denoiser(toy.clean_scores if kernel_aware else toy.denoiser, which, kernel_aware, loss_cfg)


def eq120_denoiser(base, which: str, kernel_aware: bool, loss_cfg: LossConfig | None = None) -> tuple:
    """(model, Reading) from the exact posterior's logits ``base(x_t, t)`` (f when ``kernel_aware``): itself,
    or Eq 120's exact minimiser (``base`` + log(lambda_same / lambda_chg) at v = x_t) read raw or corrected."""
    if which not in DENOISERS:
        raise ValueError(f"denoiser must be one of {DENOISERS}, got {which!r}")
    loss_cfg = loss_cfg or LossConfig()
    if which == "posterior":
        return base, Reading(kernel_aware)
    tilt = math.log(loss_cfg.lambda_same / loss_cfg.lambda_chg)

    def tilted(xt, t):
        lg = base(xt, t).clone()
        return lg.scatter_add(-1, xt.unsqueeze(-1), torch.full((*xt.shape, 1), tilt, dtype=lg.dtype))

    ratio = change_log_ratio("change_aware", loss_cfg.lambda_chg, loss_cfg.lambda_same) if which == "corrected" else 0.0
    return tilted, Reading(kernel_aware, ratio)


def build_toy(kernel: str = "semdlm_plus", vocab: int = 60, k_max: int = 12, valid: int = 57, seed: int = 0,
              table_ranks: int | None = None, **overrides) -> Toy:
    """Random table of ``table_ranks`` (default k_max) ranks, ``valid`` valid tokens (0 is [MASK], invalid)."""
    if not 1 <= valid < vocab:
        raise ValueError(f"need 1 <= valid < vocab, got valid={valid}, vocab={vocab}")
    g = torch.Generator().manual_seed(seed)
    width = table_ranks or k_max
    if width >= vocab:
        raise ValueError(f"the table needs fewer than vocab={vocab} ranks, got {width}")
    # width distinct non-self neighbours per row (random keys, top-width; O(V width) memory in chunks)
    rows = []
    for lo in range(0, vocab, 1024):
        hi = min(vocab, lo + 1024)
        keys = torch.rand(hi - lo, vocab, generator=g)
        keys[torch.arange(hi - lo), torch.arange(lo, hi)] = 2.0  # never self
        rows.append(torch.topk(-keys, width, dim=1).indices)
    neighbors = torch.cat(rows)
    perm = torch.randperm(vocab - 1, generator=g) + 1
    valid_mask = torch.zeros(vocab, dtype=torch.bool)
    valid_mask[perm[:valid]] = True
    sims = torch.sort(torch.rand(vocab, width, generator=g), descending=True, dim=1).values
    p_data = valid_mask.to(torch.float64) / valid
    cfg = KernelConfig.preset(kernel, k_max=k_max, **overrides)
    kern = build_kernel(cfg, vocab, mask_id=0, neighbors=neighbors, valid_vocab=valid_mask,
                        unigram_prior=p_data, similarities=sims)
    return Toy(kern, p_data, torch.nonzero(valid_mask).flatten())


# --------------------------------------------------------------------------- continuous-time ELBO
def _kinks(kernel: Kernel) -> list[float]:
    """Times where k_t crosses an integer (the integrand's kinks) for the kNN kernels."""
    cfg = kernel.cfg
    if not kernel.num_ranks or cfg.traits.rank_weights_per_token:
        return []
    return [((j - 1) / (cfg.k_max - 1)) ** (1.0 / cfg.k_power) for j in range(2, cfg.k_max)]


def master_equation_grid(kernel: Kernel, t_end: float, steps: int = 40) -> list[float]:
    """Times from 1 down to t_end for integrating a toy's generative master equation: geometric towards t_end
    and towards each kink of k_t from above (where a newly entered rank's rate ~ 1 / (t - kink))."""
    grid = set(torch.logspace(0.0, math.log10(t_end), steps + 1, dtype=torch.float64).tolist())
    for kink in _kinks(kernel):
        grid |= {kink + 10.0 ** -e for e in torch.linspace(1.0, 7.0, 13).tolist()} | {kink}
    return sorted((t for t in grid if t_end <= t <= 1.0), reverse=True)


def quadrature(kernel: Kernel, nodes: int = 4, t_min: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Composite Gauss-Legendre on [t_min, 1], split at the kinks and geometrically towards both ends
    (4 nodes per piece: within 1e-4 nats of the converged value on the toys)."""
    ends = [1e-5, 1e-4, 1e-3, 1e-2, 0.05]
    mid = [0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9]
    brk = sorted(set([0.0, 1.0] + ends + mid + [1.0 - e for e in ends] + _kinks(kernel)))
    brk = [b for b in brk if b > t_min]
    brk = [t_min] + brk
    x, w = np.polynomial.legendre.leggauss(nodes)
    ts, ws = [], []
    for lo, hi in zip(brk[:-1], brk[1:]):
        if hi - lo > 1e-12:
            ts.append(lo + (hi - lo) * (x + 1) / 2)
            ws.append((hi - lo) * w / 2)
    return np.concatenate(ts), np.concatenate(ws)


def _pairs(toy: Toy, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All (x0, z) with x0 in ids and z any token: [P] each."""
    V = toy.kernel.vocab_size
    return ids.repeat_interleave(V), torch.arange(V).repeat(ids.numel())


def supported_pairs(toy: Toy, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (x0, z) with x0 valid and q_t(z | x0) > 0: [P] each."""
    x0, z = _pairs(toy, toy.valid_ids)
    keep = toy.kernel.marginal_rows(toy.valid_ids, t).reshape(-1) > 0
    return x0[keep], z[keep]


def ctelbo_expected_integrand(toy: Toy, t: float, ids: torch.Tensor | None = None, model=None,
                              reading: Reading = PLAIN) -> torch.Tensor:
    """E_{z ~ q_t(.|x0)} integrand for each x0 in ids (default: all valid), enumerated, [n_ids].

    ``model(z [P], t) -> logits [P, V]`` is the (context-free) denoiser, default the exact posterior,
    read with ``reading`` (pipeline/core/posterior.py).
    """
    ids = toy.valid_ids if ids is None else ids
    x0, z = _pairs(toy, ids)
    q = toy.kernel.marginal_rows(ids, t).reshape(-1)
    keep = q > 0
    x0, z, q, row = x0[keep], z[keep], q[keep], torch.arange(ids.numel()).repeat_interleave(toy.kernel.vocab_size)[keep]
    logits = (model or toy.denoiser)(z, t)
    val = ct_elbo.ctelbo_per_token(toy.kernel, logits.unsqueeze(1), x0.unsqueeze(1), z.unsqueeze(1), t,
                                   reading=reading)
    return torch.zeros(ids.numel(), dtype=torch.float64).index_add(0, row, q * val.squeeze(1))


def prior_term(toy: Toy, ids: torch.Tensor | None = None) -> float:
    ids = toy.valid_ids if ids is None else ids
    return float(lk.prior_kl(toy.kernel, ids.unsqueeze(1)).mean())


def ctelbo_exact_per_token(toy: Toy, nodes: int = 4, ids: torch.Tensor | None = None, model=None,
                           t_min: float = 0.0, reading: Reading = PLAIN) -> torch.Tensor:
    """The continuous-time ELBO of each x0 in ids, [n_ids]: prior KL + quadrature of the enumerated
    integrand over [t_min, 1] (t_min = 0: the whole bound)."""
    ids = toy.valid_ids if ids is None else ids
    ts, ws = quadrature(toy.kernel, nodes, t_min)
    total = lk.prior_kl(toy.kernel, ids.unsqueeze(1))
    for t, w in zip(ts, ws):
        total = total + w * ctelbo_expected_integrand(toy, float(t), ids, model, reading)
    return total


def ctelbo_exact(toy: Toy, nodes: int = 4, ids: torch.Tensor | None = None, model=None,
                 reading: Reading = PLAIN) -> float:
    return float(ctelbo_exact_per_token(toy, nodes, ids, model, reading=reading).mean())


RESAMPLED_MAX_VOCAB = 200  # the resampling chain's bound is computed densely (O(V^3) per t): small toys


def resampled_exact_per_token(toy: Toy, relaxed: bool = False, nodes: int = 4, model=None, t_min: float = 0.0,
                               chunk: int = 1024) -> torch.Tensor:
    """The path bound of the resampling chain (pipeline/research/realisation.py, rho_t = beta' / (1 - beta)) for
    each valid x0, [n_valid]: prior KL + quadrature over [t_min, 1] of the enumerated integrand. ``model(z, t)``:
    logits of the clean-token scores f (read kernel-aware), default the exact posterior's (log p_data);
    ``relaxed``: the bound's O(V) form."""
    ids = toy.valid_ids
    x0_all, z_all = _pairs(toy, ids)
    row_all = torch.arange(ids.numel()).repeat_interleave(toy.kernel.vocab_size)
    ts, ws = quadrature(toy.kernel, nodes, t_min)
    total = lk.prior_kl(toy.kernel, ids.unsqueeze(1))
    for t, w in zip(ts, ws):
        t = float(t)
        q = toy.kernel.marginal_rows(ids, t).reshape(-1)
        keep = torch.nonzero(q > 0).flatten()
        x0, z, q, row = x0_all[keep], z_all[keep], q[keep], row_all[keep]
        rho = realisation.resample_rate(toy.kernel, t)
        for lo in range(0, x0.numel(), chunk):
            zc = z[lo:lo + chunk]
            f = torch.softmax((model or toy.clean_scores)(zc, t).to(torch.float64), -1)
            val = realisation.integrand(toy.kernel, f, x0[lo:lo + chunk], zc, t, rho, relaxed)
            total = total.index_add(0, row[lo:lo + chunk], w * q[lo:lo + chunk] * val)
    return total


def resampled_exact(toy: Toy, relaxed: bool = False, nodes: int = 4) -> float:
    return float(resampled_exact_per_token(toy, relaxed, nodes).mean())


def _mc(toy: Toy, integrand, n: int, seed: int, t_min: float, chunk: int) -> tuple[float, float]:
    """Monte-Carlo over x0, antithetic t and x_t (one draw each), t clamped to [t_min, 1]: (mean, s.e.)
    of ``integrand(xc, xt, tc) + KL(q_1 || pi)``."""
    g = torch.Generator().manual_seed(seed)
    t = ct_elbo.antithetic_times(n, g, t_min)
    x0 = toy.valid_ids[torch.randint(toy.valid_ids.numel(), (n,), generator=g)]
    vals = []
    for lo in range(0, n, chunk):
        tc, xc = t[lo:lo + chunk], x0[lo:lo + chunk].unsqueeze(1)
        xt, _ = toy.kernel.sample_xt(xc, tc, generator=g)
        vals.append(integrand(xc, xt, tc) + lk.prior_kl(toy.kernel, xc))
    v = torch.cat(vals)
    return float(v.mean()), float(v.std() / math.sqrt(n))


def ctelbo_mc(toy: Toy, n: int = 4096, seed: int = 0, t_min: float = T_MIN, chunk: int = 256
              ) -> tuple[float, float]:
    """The conditional-path ELBO by Monte-Carlo (see :func:`_mc`)."""
    def integrand(xc, xt, tc):
        logits = toy.denoiser(xt.reshape(-1), tc).unsqueeze(1)
        return ct_elbo.ctelbo_integrand(toy.kernel, logits, xc, xt, tc)

    return _mc(toy, integrand, n, seed, t_min, chunk)


def data_denoiser(toy: Toy):
    """The context-free optimum of UDLM's parameterisation: p_theta = p_data, whatever x_t (UDLM plugs
    p_theta into the Markov posterior, so the exact reverse rates need the prior, not the posterior)."""
    return lambda z, t: toy.p_data.log().expand(z.numel(), -1)


def udlm_exact(toy: Toy, nodes: int = 4, model=None, reading: Reading | None = None) -> float:
    """UDLM's closed form (uniform kernel only), enumerated over x0 and z, quadrature over t;
    ``model(z, t) -> logits`` (default: the exact posterior) fed as they are, or, given a ``reading``,
    converted to the clean-token scores it stands for (pipeline.core.posterior.clean_score_logits)."""
    k = toy.kernel
    ts, ws = quadrature(k, nodes)
    x0, z = _pairs(toy, toy.valid_ids)
    total = prior_term(toy)
    for t, w in zip(ts, ws):
        q = k.marginal_rows(toy.valid_ids, float(t)).reshape(-1)
        logits = (model or toy.denoiser)(z, float(t))
        if reading is not None:
            logits = clean_score_logits(reading, k, logits, z, float(t))
        logp = torch.log_softmax(logits, -1)
        tt = torch.full((z.numel(),), float(t), dtype=torch.float64)
        a, da = lk.alpha_and_derivative(k.cfg, tt)
        val = lk.udlm_integrand(logp.unsqueeze(1), x0.unsqueeze(1), z.unsqueeze(1), a, da).squeeze(1)
        total += w * float((q * val).sum()) / toy.valid_ids.numel()
    return total


def udlm_mc(toy: Toy, n: int = 4096, seed: int = 0, t_min: float = T_MIN, chunk: int = 256, model=None
            ) -> tuple[float, float]:
    """UDLM's closed form by Monte-Carlo (see :func:`_mc`); ``model`` as in :func:`udlm_exact`."""
    def integrand(xc, xt, tc):
        logp = torch.log_softmax((model or toy.denoiser)(xt.reshape(-1), tc), -1).unsqueeze(1)
        a, da = lk.alpha_and_derivative(toy.kernel.cfg, tc)
        return lk.udlm_integrand(logp, xc, xt, a, da).squeeze(1)

    return _mc(toy, integrand, n, seed, t_min, chunk)


# --------------------------------------------------------------------------- T-step bound
class _Model:
    def __init__(self, toy: Toy, t: float):
        self.toy, self.t = toy, t

    def __call__(self, xt, t):  # t exactly (the step's float time, not its float32 copy)
        return self.toy.denoiser(xt.reshape(-1), self.t).reshape(*xt.shape, -1)


def tstep_exact(toy: Toy, T: int, ids: torch.Tensor | None = None, chunk: int = 4096) -> float:
    """The T-step bound with the exact posterior, every expectation enumerated, mean over x0 in ids."""
    ids = toy.valid_ids if ids is None else ids
    x0_all, z_all = _pairs(toy, ids)
    total = prior_term(toy, ids)
    for i in range(1, T + 1):
        s, t = (i - 1) / T, i / T
        q = toy.kernel.marginal_rows(ids, t).reshape(-1)
        keep = q > 0
        x0, z, qk = x0_all[keep], z_all[keep], q[keep]
        for lo in range(0, x0.numel(), chunk):
            kl = lk.step_kl(toy.kernel, _Model(toy, t), x0[lo:lo + chunk, None], z[lo:lo + chunk, None], s, t)
            total += float((qk[lo:lo + chunk] * kl).sum()) / ids.numel()
    return total


def tstep_mc(toy: Toy, T: int, n: int = 64, steps: int = 16, seed: int = 0) -> tuple[float, float]:
    """Monte-Carlo T-step bound: n draws of x0, each with ``steps`` stratified step indices and x_t draws."""
    g = torch.Generator().manual_seed(seed)
    x0 = toy.valid_ids[torch.randint(toy.valid_ids.numel(), (n,), generator=g)].unsqueeze(1)
    total = torch.zeros(n, dtype=torch.float64)
    u = torch.rand(n, steps, generator=g, dtype=torch.float64)
    idx = ((torch.arange(steps) + u) / steps * T).floor().long().clamp(0, T - 1) + 1  # [n, steps]
    for j in range(steps):
        for i in torch.unique(idx[:, j]).tolist():
            rows = torch.nonzero(idx[:, j] == i).flatten()
            s, t = (i - 1) / T, i / T
            xt, _ = toy.kernel.sample_xt(x0[rows], torch.full((rows.numel(),), t), generator=g)
            total[rows] += lk.step_kl(toy.kernel, _Model(toy, t), x0[rows], xt, s, t) * (T / steps)
    total += lk.prior_kl(toy.kernel, x0)
    return float(total.mean()), float(total.std() / math.sqrt(n))


# --------------------------------------------------------------------------- report
def run(kernel: str = "semdlm_plus", vocab: int = 60, k_max: int = 12, valid: int = 57, seed: int = 0,
        steps=(8, 64, 512), exact_max: int = 2000, mc: int = 4096, tstep_n: int = 64, tstep_draws: int = 16,
        table_ranks: int | None = None, parameterization: str = "kernel", tilted: bool = True,
        resampled: bool = True) -> dict:
    toy = build_toy(kernel, vocab, k_max, valid, seed, table_ranks)
    exact = vocab <= exact_max
    res = {"kernel": kernel, "exact_nll": toy.exact_nll, "enumerated": exact, "tstep": {},
           "parameterization": parameterization}
    if exact and tilted and not toy.kernel.cfg.absorbing:  # Eq 120's exact optimum, read raw and corrected
        for which in ("tilted", "corrected"):
            model, reading = toy_denoiser(toy, which, parameterization)
            res[which] = (ctelbo_exact(toy, model=model, reading=reading), 0.0)
    for T in steps:
        res["tstep"][T] = (tstep_exact(toy, T), 0.0) if exact else tstep_mc(toy, T, tstep_n, tstep_draws, seed)
    if exact:
        res["ctelbo"] = (ctelbo_exact(toy), 0.0)
        # dense O(V^2) per pair: small toys only; and only where there is a global branch to resample from
        if resampled and vocab <= RESAMPLED_MAX_VOCAB and realisation.resample_rate(toy.kernel, 0.5) > 0:
            res["resampled"] = (resampled_exact(toy), 0.0)
            res["resampled_relaxed"] = (resampled_exact(toy, relaxed=True), 0.0)
    res["ctelbo_mc"] = ctelbo_mc(toy, mc, seed)
    if "udlm_continuous" in toy.kernel.cfg.continuous_bounds:
        res["udlm"] = (udlm_exact(toy), 0.0) if exact else udlm_mc(toy, mc, seed)
        res["udlm_opt"] = (udlm_exact(toy, model=data_denoiser(toy)), 0.0) if exact else udlm_mc(
            toy, mc, seed, model=data_denoiser(toy))
    if "ctelbo" not in res:
        res["ctelbo"] = res["ctelbo_mc"]
    return res


def format_report(res: dict) -> str:
    pm = lambda v: f"{v[0]:.4f}" + (f" ± {v[1]:.4f}" if v[1] else "")  # noqa: E731
    how = "enumerated x0, x_t; quadrature over t" if res["enumerated"] else "Monte-Carlo (mean ± s.e.)"
    lines = [f"kernel={res['kernel']}  ({how}; nats per token, exact posterior as the denoiser)",
             f"  {'exact NLL':<34}{res['exact_nll']:.4f}"]
    for T, v in res["tstep"].items():
        lines.append(f"  {'T-step bound, T=' + str(T):<34}{pm(v)}")
    lines.append(f"  {'continuous-time ELBO':<34}{pm(res['ctelbo'])}")
    lines.append(f"  {'  (antithetic MC over t)':<34}{pm(res['ctelbo_mc'])}")
    if "udlm" in res:
        lines.append(f"  {'UDLM closed form (same denoiser)':<34}{pm(res['udlm'])}")
        lines.append(f"  {'UDLM at its optimum (p_data)':<34}{pm(res['udlm_opt'])}")
    for which in ("tilted", "corrected"):
        if which in res:
            label = f"ctELBO, Eq 120 optimum {which} ({res['parameterization']})"
            lines.append(f"  {label:<44}{pm(res[which])}")
    if "resampled" in res:
        lines.append(f"  {'path bound, resampling chain':<34}{pm(res['resampled'])}")
        lines.append(f"  {'  (its O(V) relaxation)':<34}{pm(res['resampled_relaxed'])}")
    T_max = max(res["tstep"])
    last = f"exact={res['exact_nll']:.4f} tstep={res['tstep'][T_max][0]:.4f} ctelbo={res['ctelbo'][0]:.4f}"
    last += "".join(f" {w}={res[w][0]:.4f}" for w in ("tilted", "corrected", "resampled", "resampled_relaxed")
                    if w in res)
    lines.append(last)
    return "\n".join(lines)


if __name__ == "__main__":  # the command is python -m pipeline.bound_check; this module is its library
    raise SystemExit(library_not_a_command(__spec__.name, "pipeline.bound_check"))
