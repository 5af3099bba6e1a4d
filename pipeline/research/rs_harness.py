"""Exact-KL harness for unmasking schedules on Reed–Solomon codes (library of ``python -m pipeline.rs_harness``).

Setting (Cai & Zhao 2026, experiments): the data distribution is uniform over the codewords of
RS(n, k) over GF(q); the mask predictor is an oracle returning the exact conditional marginals;
the masked-diffusion sampler reveals uniformly random positions in parallel, ``sizes[j]`` of them
at iteration j, with a schedule from :mod:`pipeline.sampling.unmasking` (the one the sampling stage uses).

For each schedule and number of iterations K the harness reports KL(data || sampler) three ways:

* ``kl_exact`` — the sampler's output distribution computed exactly by dynamic programming over
  the revealed sets (every set of positions, every assignment, every size outcome of a randomized
  schedule with its exact probability), then the KL against the code distribution. Feasible while
  q^n <= ``--exact-limit`` (default 200,000, e.g. q=7/n=6 or q=5/n=7; a few seconds to a minute).
* ``kl_closed_form`` — exact for RS at any size: by the MDS property, while fewer than k
  positions are revealed the oracle marginals are uniform and every set of <= k coordinates of a
  codeword is uniform, so the output is a codeword iff the block that first reaches >= k revealed
  positions (cumulative count c*) happens to be consistent, probability q^(k - c*). The sampler is
  equivariant under adding a codeword, so its output is uniform on the code given "codeword", and
  KL = -log E_sizes[q^(k - c*)].
* ``kl_mc`` — Monte Carlo of the actual sampler with the algebraic oracle; by the same symmetry
  KL = -log P(output is a codeword), estimated with a delta-method standard error.

TC = sum_i H(X_i) - H(X) and DTC = H(X) - sum_i H(X_i | X_-i) (nats) of the code distribution are
computed from the table when enumerable and equal (n - k) log q and k log q (k < n) otherwise.
"""
from __future__ import annotations

import itertools
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.common.artifacts import ConfigError, StageRun, write_csv
from pipeline.common.cli_fields import cli_field
from pipeline.common.errors import library_not_a_command
from pipeline.research.reed_solomon import RSCode, RSOracle, all_configurations, code_distribution
from pipeline.sampling.unmasking import SCHEDULES, select_positions, size_distribution

STAGE = "rs_harness"
DEFAULT_EXACT_LIMIT = 200_000
DEFAULT_MC_SAMPLES = 20_000  # Monte Carlo runs per (schedule, K) when the code is too large to enumerate


# --------------------------------------------------------------------------- information measures
def entropy(probs: torch.Tensor) -> float:
    p = probs[probs > 0]
    return float(-(p * p.log()).sum())


def _marginal_entropies(probs: torch.Tensor, q: int, n: int) -> tuple[float, list[float], list[float]]:
    """H(X), [H(X_i)], [H(X_-i)] of a dense Float64[q^n] table."""
    table = probs.reshape((q,) * n)
    singles = [entropy(table.sum(dim=tuple(d for d in range(n) if d != i))) if n > 1 else entropy(table)
               for i in range(n)]
    leave_one_out = [entropy(table.sum(dim=i)) for i in range(n)]
    return entropy(probs), singles, leave_one_out


def total_correlation(probs: torch.Tensor, q: int, n: int) -> float:
    """TC(X) = sum_i H(X_i) - H(X)."""
    joint, singles, _ = _marginal_entropies(probs, q, n)
    return sum(singles) - joint


def dual_total_correlation(probs: torch.Tensor, q: int, n: int) -> float:
    """DTC(X) = H(X) - sum_i H(X_i | X_-i), with H(X_i | X_-i) = H(X) - H(X_-i)."""
    joint, _, leave_one_out = _marginal_entropies(probs, q, n)
    return joint - sum(joint - h for h in leave_one_out)


def rs_tc_dtc(code: RSCode) -> tuple[float, float]:
    """Closed forms for the uniform RS code distribution: ((n-k) log q, k log q if k < n else 0)."""
    log_q = math.log(code.q)
    return (code.n - code.k) * log_q, (code.k * log_q if code.k < code.n else 0.0)


def kl_divergence(p: torch.Tensor, r: torch.Tensor) -> float:
    """KL(p || r) in nats; inf when r misses mass of p."""
    support = p > 0
    if bool((r[support] <= 0).any()):
        return math.inf
    return float((p[support] * (p[support] / r[support]).log()).sum())


# --------------------------------------------------------------------------- exact sampler law
def exact_output_distribution(oracle, q: int, n: int, sizes: tuple[int, ...]) -> torch.Tensor:
    """Exact law (Float64[q^n]) of the parallel sampler for one size sequence.

    State: for each revealed set R (sorted tuple) the sub-probability of every assignment x_R, an
    array of shape (q,)*|R|. Iteration with size s: every s-subset S of the masked positions is
    chosen with probability 1 / C(n - |R|, s) and filled with the product of the oracle marginals.
    """
    if sum(sizes) != n:
        raise ValueError(f"sizes {sizes} do not sum to n={n}")
    states: dict[tuple[int, ...], torch.Tensor] = {(): torch.ones((), dtype=torch.float64)}
    for s in sizes:
        new_states: dict[tuple[int, ...], torch.Tensor] = {}
        for revealed_set, mass in states.items():
            r = len(revealed_set)
            values = torch.zeros((q ** r, n), dtype=torch.long)
            values[:, list(revealed_set)] = all_configurations(q, r)
            revealed = torch.zeros((q ** r, n), dtype=torch.bool)
            revealed[:, list(revealed_set)] = True
            marginals = oracle.conditionals(values, revealed)              # [q^r, n, q]
            masked = [i for i in range(n) if i not in revealed_set]
            weight = 1.0 / math.comb(len(masked), s)
            flat_mass = mass.reshape(-1)
            for chosen in itertools.combinations(masked, s):
                joint = flat_mass[:, None]
                for i in chosen:  # product of the oracle marginals of the revealed block
                    joint = (joint[:, :, None] * marginals[:, i, None, :]).reshape(q ** r, -1)
                order = revealed_set + chosen
                block = joint.reshape((q,) * (r + s)) if r + s else joint.reshape(())
                key = tuple(sorted(order))
                block = block.permute([order.index(i) for i in key]) * weight
                new_states[key] = new_states[key] + block if key in new_states else block
        states = new_states
    return states[tuple(range(n))].reshape(-1)


def exact_kl(code: RSCode, schedule: str, K: int, data: torch.Tensor | None = None) -> float:
    """KL(code distribution || sampler output), exact, mixing the schedule's size outcomes."""
    data = code_distribution(code) if data is None else data
    oracle = RSOracle(code)
    law = torch.zeros_like(data)
    for prob, sizes in size_distribution(schedule, code.n, K):
        law += prob * exact_output_distribution(oracle, code.q, code.n, sizes)
    return kl_divergence(data, law)


def closed_form_kl(code: RSCode, schedule: str, K: int) -> float:
    """-log E_sizes[q^(k - c*)], c* = first cumulative revealed count >= k (see module docstring)."""
    total = 0.0
    for prob, sizes in size_distribution(schedule, code.n, K):
        cumulative = itertools.accumulate(sizes)
        c_star = next(c for c in cumulative if c >= code.k)
        total += prob * float(code.q) ** (code.k - c_star)
    return -math.log(total)


# --------------------------------------------------------------------------- Monte Carlo
def run_sampler(oracle, n: int, q: int, sizes: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """The parallel masked sampler: sizes Long[B, K] per row -> samples Long[B, n]."""
    batch = sizes.shape[0]
    values = torch.zeros((batch, n), dtype=torch.long)
    revealed = torch.zeros((batch, n), dtype=torch.bool)
    for j in range(sizes.shape[1]):
        probs = oracle.conditionals(values, revealed)
        reveal = select_positions(~revealed, sizes[:, j], generator=generator)
        # Inverse-CDF draw of every position from its marginal (only revealed ones are kept).
        u = torch.rand((batch, n, 1), generator=generator, dtype=probs.dtype)
        draw = (probs.cumsum(-1) < u * probs.sum(-1, keepdim=True)).sum(-1).clamp_max(q - 1)
        values = torch.where(reveal, draw, values)
        revealed |= reveal
    return values


def monte_carlo_kl(code: RSCode, schedule: str, K: int, num_samples: int, seed: int = 0,
                   batch: int = 4096) -> tuple[float, float]:
    """(KL estimate, standard error) from ``num_samples`` runs of the sampler."""
    generator = torch.Generator().manual_seed(seed)
    outcomes = size_distribution(schedule, code.n, K)
    probs = torch.tensor([p for p, _ in outcomes], dtype=torch.float64)
    table = torch.tensor([s for _, s in outcomes], dtype=torch.long)
    oracle, hits = RSOracle(code), 0
    for start in range(0, num_samples, batch):
        b = min(batch, num_samples - start)
        pick = torch.multinomial(probs, b, replacement=True, generator=generator)
        samples = run_sampler(oracle, code.n, code.q, table[pick], generator)
        hits += int(code.is_codeword(samples).sum())
    p_hat = hits / num_samples
    if hits == 0:
        return math.inf, math.inf
    return -math.log(p_hat), math.sqrt((1.0 - p_hat) / (num_samples * p_hat))


# --------------------------------------------------------------------------- the stage
@dataclass(frozen=True)
class RsHarnessConfig:
    """What ``python -m pipeline.rs_harness`` computes; ``progress`` is runtime-only. Each field with a
    flag declares it (pipeline/common/cli_fields.py)."""

    q: int = cli_field(7, help="prime field size (default 7)")
    n: int = cli_field(6, help="code length, <= q (default 6)")
    k: int = cli_field(3, help="code dimension (default 3)")
    iterations: tuple[int, ...] | None = cli_field(None, help="comma-separated K values (default 1..n)")
    schedules: tuple[str, ...] = cli_field(SCHEDULES, help="comma-separated subset of " + ",".join(SCHEDULES))
    exact_limit: int = cli_field(DEFAULT_EXACT_LIMIT,
                                 help="largest q^n for the exact dynamic programme (default %(default)s)")
    mc_samples: int | None = cli_field(  # None: DEFAULT_MC_SAMPLES beyond the exact limit, 0 within
        None, help=f"Monte Carlo runs per (schedule, K); default {DEFAULT_MC_SAMPLES} beyond the exact limit, 0 within")
    seed: int = cli_field(0, help="random seed of the Monte Carlo runs")
    progress: bool = True

    def __post_init__(self):
        RSCode(self.q, self.n, self.k)  # raises ValueError naming the invalid parameter
        object.__setattr__(self, "schedules", tuple(self.schedules))
        unknown = [s for s in self.schedules if s not in SCHEDULES]
        if unknown or not self.schedules:
            raise ConfigError(f"unknown schedules {unknown}; choose from {SCHEDULES}")
        if self.iterations is not None:
            values = tuple(sorted(set(self.iterations)))
            bad = [v for v in values if not 1 <= v <= self.n]
            if bad or not values:
                raise ConfigError(f"iterations {bad} outside [1, n={self.n}]")
            object.__setattr__(self, "iterations", values)
        if self.mc_samples is not None and self.mc_samples < 0:
            raise ConfigError(f"mc_samples must be >= 0, got {self.mc_samples}")

    @property
    def code(self) -> RSCode:
        return RSCode(self.q, self.n, self.k)

    @property
    def exact(self) -> bool:
        """Whether the sampler law is enumerated (q^n <= exact_limit)."""
        return self.q ** self.n <= self.exact_limit

    @property
    def resolved_iterations(self) -> tuple[int, ...]:
        return self.iterations if self.iterations is not None else tuple(range(1, self.n + 1))

    @property
    def resolved_mc_samples(self) -> int:
        if self.mc_samples is not None:
            return self.mc_samples
        return 0 if self.exact else DEFAULT_MC_SAMPLES

    def artifact_config(self) -> dict:
        """The result-determining fields, resolved: ``exact`` instead of the limit that decided it,
        the seed only when Monte Carlo runs."""
        cfg = {"q": self.q, "n": self.n, "k": self.k, "iterations": list(self.resolved_iterations),
               "schedules": list(self.schedules), "exact": self.exact, "mc_samples": self.resolved_mc_samples}
        if cfg["mc_samples"] > 0:
            cfg["seed"] = self.seed
        return cfg


def compute(cfg: RsHarnessConfig) -> tuple[list[dict], dict]:
    """(one row per (schedule, K), info {tc, dtc, exact, mc_samples}) of the harness."""
    from tqdm import tqdm

    code, exact, mc_samples = cfg.code, cfg.exact, cfg.resolved_mc_samples
    data = code_distribution(code) if exact else None
    if exact:
        tc, dtc = total_correlation(data, code.q, code.n), dual_total_correlation(data, code.q, code.n)
    else:
        tc, dtc = rs_tc_dtc(code)
    rows = []
    jobs = [(s, K) for s in cfg.schedules for K in cfg.resolved_iterations]
    for schedule, K in tqdm(jobs, desc="rs_harness", file=sys.stderr, disable=not cfg.progress):
        row = {"schedule": schedule, "K": K, "kl_exact": math.nan,
               "kl_closed_form": closed_form_kl(code, schedule, K), "kl_mc": math.nan,
               "kl_mc_stderr": math.nan, "tc_over_K": tc / K, "dtc_over_K": dtc / K}
        if exact:
            row["kl_exact"] = exact_kl(code, schedule, K, data)
        if mc_samples > 0:
            row["kl_mc"], row["kl_mc_stderr"] = monte_carlo_kl(code, schedule, K, mc_samples, cfg.seed)
        rows.append(row)
    return rows, {"tc": tc, "dtc": dtc, "exact": exact, "mc_samples": mc_samples}


def markdown_table(rows: list[dict], info: dict, code_desc: str) -> str:
    cols = ["schedule", "K", "kl_exact", "kl_closed_form", "kl_mc", "kl_mc_stderr", "tc_over_K", "dtc_over_K"]
    fmt = lambda v: f"{(0.0 if abs(v) < 1e-12 else v):.4f}" if isinstance(v, float) else str(v)
    lines = [f"RS harness: {code_desc}; TC = {info['tc']:.4f} nats, DTC = {info['dtc']:.4f} nats; "
             f"exact enumeration: {info['exact']}; MC samples: {info['mc_samples']}", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for schedule in dict.fromkeys(r["schedule"] for r in rows):
        pts = [r for r in rows if r["schedule"] == schedule]
        ys = [r["kl_exact"] if not math.isnan(r["kl_exact"]) else r["kl_closed_form"] for r in pts]
        ax.plot([r["K"] for r in pts], ys, marker="o", label=f"KL, {schedule}")
    ks = sorted({r["K"] for r in rows})
    ax.plot(ks, [rows[0]["tc_over_K"] * rows[0]["K"] / K for K in ks], "k--", label="TC/K")
    ax.plot(ks, [rows[0]["dtc_over_K"] * rows[0]["K"] / K for K in ks], "k:", label="DTC/K")
    ax.set_xlabel("iterations K")
    ax.set_ylabel("KL(data || sampler) [nats]")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_rs_harness(cfg: RsHarnessConfig, out: str | os.PathLike, force: bool = False, log=print,
                   break_lock: bool = False) -> Path:
    """Run the harness into the artifact ``out`` (kl.csv, summary.md, kl_vs_K.png); logs the table."""
    out = Path(out)
    stage = StageRun(STAGE, out, config=cfg.artifact_config(), force=force, break_lock=break_lock)
    if stage.is_up_to_date():
        log(f"{out}: up to date")
        log((out / "summary.md").read_text())
        return out
    started = time.time()
    with stage.locked():  # before the computation: a second job on ``out`` stops here
        rows, info = compute(cfg)
        desc = f"RS(n={cfg.n}, k={cfg.k}) over GF({cfg.q})"
        table = markdown_table(rows, info, desc)
        with stage as tmp:
            write_csv(tmp / "kl.csv", rows)
            (tmp / "summary.md").write_text(table)
            plot(rows, tmp / "kl_vs_K.png", desc)
            stage.extra["stats"] = {**info, "seconds": round(time.time() - started, 2)}
    log(table)
    return out


if __name__ == "__main__":  # the command is python -m pipeline.rs_harness; this module is its library
    raise SystemExit(library_not_a_command(__spec__.name, "pipeline.rs_harness"))
