"""Kernel diagnostics before training (library of ``python -m pipeline.diagnose``; paper Sec 3.2, App B.4, B.6.2).

For each transition kernel and a grid of diffusion times t, with the unigram prior pi as the
clean-token distribution, the posterior of Eq 57,

    q(x0 = k | xt = j) = pi_k q_t(j | k) / sum_r pi_r q_t(j | r),

is summarised by the metrics of Eq 16/53 (d_act = |supp q| - 1, I1 = 1 - ||q||^2, I2 = tr Sigma^2,
Sigma = Diag(q) - q q^T), the eps-effective d_act of App B.4 (|{k : q_k >= eps}| - 1, floored at
0) and the posterior entropy, each averaged over xt ~ q_t = sum_k pi_k q_t(. | k). The kernel
dispersion of App B.6.2 is D(Q) = Var_t h(t; Q) with h(t; Q) = E_xt H(q(x0 | xt)), over a midpoint
grid of t in (0, 1).

Exact method (default). Every kernel of pipeline.core.kernels has the branch form
q_t(j | k) = a_jk + g_j w_k / pi_k: a sparse part (self + neighbour entries, a_jk = pi_k q) and a
rank-one global part (nu(j) times beta_k). Column sums, ||q||^2, sum q^3, the entropy and the
(eps-)support counts of every column j then follow from per-column sums over the sparse entries
plus closed forms of the rank-one part (sorted w for the eps counts), so the full 30,522-token
vocabulary costs O(V k_max) per t, chunked over x0, with no dense V x V matrix.

Monte Carlo (``--method mc``): x0 ~ pi, xt ~ q_t(. | x0) (kernel.sample_xt), dense posterior from
kernel.likelihood_of; reported with the standard error of the mean. Used as the cross-check.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pipeline.common.artifacts import ConfigError, StageRun, write_csv
from pipeline.common.cli_fields import cli_field
from pipeline.common.errors import library_not_a_command
from pipeline.core.kernels import KERNEL_NAMES, Kernel, KernelConfig, make_kernel

STAGE = "diagnose"

METRICS = ("d_act", "d_act_eps", "I1", "I2", "entropy")


@dataclass(frozen=True)
class DiagnoseConfig:
    """What ``python -m pipeline.diagnose`` computes. ``chunk`` (x0 rows per step of the exact
    sums) and ``progress`` are runtime-only; ``mc_samples`` and ``seed`` only matter for ``mc``.
    Each field with a flag declares it (pipeline/common/cli_fields.py)."""

    kernels: tuple[str, ...] = cli_field(("mask", "uniform", "semdlm", "semdlm_plus"),
                                         help="comma-separated kernel presets")
    num_t: int = cli_field(20, help="points of the t grid")
    eps: float = cli_field(1e-5, help="threshold of the eps-effective support")
    method: str = cli_field("exact", choices=("exact", "mc"), help="exact sums, or Monte Carlo (the cross-check)")
    mc_samples: int = cli_field(2048, help="(x0, xt) draws per t of the Monte Carlo method")
    chunk: int = 4096
    seed: int = cli_field(0, help="random seed of the Monte Carlo method")
    mask_id: int | None = cli_field(  # None: from the neighbour artifact's tokenizer, else the default tokenizer
        None, help="[MASK] id (default: from the tokenizer)")
    progress: bool = True

    def __post_init__(self):
        object.__setattr__(self, "kernels", tuple(self.kernels))
        bad = [k for k in self.kernels if k not in KERNEL_NAMES]
        if bad or not self.kernels:
            raise ConfigError(f"unknown kernels {bad}; choose from {KERNEL_NAMES}")
        if self.num_t < 2:
            raise ConfigError(f"num_t must be >= 2 (dispersion is a variance over t), got {self.num_t}")
        if not 0.0 < self.eps < 1.0:
            raise ConfigError(f"eps must be in (0, 1), got {self.eps}")
        if self.method not in ("exact", "mc"):
            raise ConfigError(f"method must be 'exact' or 'mc', got {self.method!r}")
        if self.mc_samples < 2 or self.chunk < 1:
            raise ConfigError("mc_samples must be >= 2 and chunk >= 1")

    def artifact_config(self) -> dict:
        """The result-determining fields (what the manifest's config hash is taken of)."""
        cfg = asdict(self)
        for runtime_only in ("chunk", "progress"):
            cfg.pop(runtime_only)
        if self.method == "exact":  # the exact path draws nothing
            cfg.pop("mc_samples"), cfg.pop("seed")
        return cfg

    def t_grid(self) -> torch.Tensor:
        """Midpoints of num_t equal cells of (0, 1): E_t over the grid is a quadrature of t ~ U(0, 1)."""
        return (torch.arange(self.num_t, dtype=torch.float64) + 0.5) / self.num_t


# --------------------------------------------------------------------------- dense definitions
def posterior_eq57(prior: torch.Tensor, likelihood: torch.Tensor) -> torch.Tensor:
    """Eq 57: q(x0 = k | xt) = pi_k q_t(xt | k) / sum_r pi_r q_t(xt | r); likelihood [..., V]."""
    joint = prior * likelihood
    return joint / joint.sum(-1, keepdim=True)


def posterior_metrics(q: torch.Tensor, eps: float) -> dict[str, torch.Tensor]:
    """Eq 16/53/54 and the eps-effective d_act of App B.4 for posteriors q [..., V].

    d_act = rank Sigma(q) = |supp q| - 1; I1 = tr Sigma = 1 - ||q||^2;
    I2 = tr Sigma^2 = sum q^2 - 2 sum q^3 + (sum q^2)^2; d_act_eps = max(|{q >= eps}|, 1) - 1.
    """
    sq, cube = (q * q).sum(-1), (q ** 3).sum(-1)
    logq = torch.where(q > 0, q.log(), torch.zeros_like(q))
    return {"d_act": (q > 0).sum(-1).to(q.dtype) - 1,
            "d_act_eps": (q >= eps).sum(-1).clamp_min(1).to(q.dtype) - 1,
            "I1": 1.0 - sq, "I2": sq - 2.0 * cube + sq * sq, "entropy": -(q * logq).sum(-1)}


def kernel_dispersion(h: torch.Tensor) -> float:
    """App B.6.2: D(Q) = Var_t h(t; Q) = E_t[h^2] - (E_t h)^2 over the t grid."""
    return float((h * h).mean() - h.mean() ** 2)


# --------------------------------------------------------------------------- exact sparse path
def _sparse_entries(kernel: Kernel, support: torch.Tensor, prior: torch.Tensor, t: float, chunk: int):
    """Yield (j, k, a = pi_k q_t(j|k) on the sparse branches, pi_k beta_k, nu) per chunk of x0."""
    for start in range(0, support.numel(), chunk):
        k = support[start:start + chunk]
        m = kernel.marginal_sparse(k, t)
        pk = prior[k]
        j = torch.cat([k[:, None], m.ids], 1)
        a = pk[:, None] * torch.cat([m.self_prob[:, None], m.probs], 1)
        yield j.reshape(-1), k[:, None].expand_as(j).reshape(-1), a.reshape(-1), pk * m.global_weight, k, m.global_dist


def _entropy_term(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x > 0, -x * x.clamp_min(1e-300).log(), torch.zeros_like(x))


def exact_expected_metrics(kernel: Kernel, prior: torch.Tensor, t: float, eps: float,
                           chunk: int = 4096) -> dict[str, float]:
    """E_{xt ~ q_t}[metric(q(. | xt))] for every metric of :func:`posterior_metrics`, exactly.

    Column j of the Eq 57 posterior is (a_jk + g_j w_k) / Z_j with a the sparse entries, g = nu,
    w_k = pi_k beta_k, Z_j = A_j + g_j W: its power sums, entropy and support counts are sums over
    the sparse entries of column j plus closed forms in the moments of w.
    """
    V = kernel.vocab_size
    dt = torch.float64
    if kernel.num_ranks > 1:  # the per-column sums assume each (j, k) pair appears once
        ranked = kernel.neighbors.sort(dim=1).values
        if bool((ranked[:, 1:] == ranked[:, :-1]).any()):
            raise ValueError("neighbour rows must hold distinct ids for the exact diagnostics")
    support = (prior > 0).nonzero().squeeze(1)
    A, M2, M3, w = (torch.zeros(V, dtype=dt) for _ in range(4))
    g = kernel.global_dist.to(dt)
    for j, _, a, wk, k, _ in _sparse_entries(kernel, support, prior, t, chunk):  # pass 1: column sums
        A.index_add_(0, j, a)
        M2.index_add_(0, j, a * a)
        M3.index_add_(0, j, a ** 3)
        w[k] = wk
    W, W2, W3 = w.sum(), (w * w).sum(), (w ** 3).sum()
    positive_w = w[w > 0]
    w_log_w, n_w = (positive_w * positive_w.log()).sum(), positive_w.numel()
    w_sorted = positive_w.sort().values
    Z = A + g * W
    live = Z > 0
    Zs = torch.where(live, Z, torch.ones_like(Z))
    C1, C2, C3, H_corr, n_exact, n_eps = (torch.zeros(V, dtype=dt) for _ in range(6))
    for j, kk, a, _, _, _ in _sparse_entries(kernel, support, prior, t, chunk):  # pass 2: cross terms
        gw = g[j] * w[kk]
        C1.index_add_(0, j, a * w[kk])
        C2.index_add_(0, j, a * a * w[kk])
        C3.index_add_(0, j, a * w[kk] ** 2)
        H_corr.index_add_(0, j, _entropy_term((a + gw) / Zs[j]) - _entropy_term(gw / Zs[j]))
        # Entries outside the rank-one support add a new support point (exact d_act).
        n_exact.index_add_(0, j, ((a > 0) & ~(gw > 0)).to(dt))
        n_eps.index_add_(0, j, (((a + gw) / Zs[j]) >= eps).to(dt) - ((gw / Zs[j]) >= eps).to(dt))
    has_g = g > 0
    sq = (M2 + 2 * g * C1 + g * g * W2) / Zs ** 2
    cube = (M3 + 3 * g * C2 + 3 * g * g * C3 + g ** 3 * W3) / Zs ** 3
    ratio = torch.where(has_g, g / Zs, torch.ones_like(g))
    H_dense = torch.where(has_g, -ratio * (w_log_w + W * ratio.log()), torch.zeros_like(g))
    threshold = torch.where(has_g, eps * Zs / torch.where(has_g, g, torch.ones_like(g)), torch.zeros_like(g))
    dense_eps = n_w - torch.searchsorted(w_sorted, threshold, right=False)
    count = n_exact + has_g.to(dt) * n_w
    count_eps = n_eps + has_g.to(dt) * dense_eps.to(dt)
    per_column = {"d_act": count - 1, "d_act_eps": count_eps.clamp_min(1) - 1, "I1": 1 - sq,
                  "I2": sq - 2 * cube + sq * sq, "entropy": H_dense + H_corr}
    weight = torch.where(live, Z, torch.zeros_like(Z))
    return {name: float((weight * torch.where(live, v, torch.zeros_like(v))).sum()) for name, v in per_column.items()}


def monte_carlo_expected_metrics(kernel: Kernel, prior: torch.Tensor, t: float, eps: float, num_samples: int,
                                 generator: torch.Generator, chunk: int = 256) -> dict[str, tuple[float, float]]:
    """(mean, standard error) of every metric over x0 ~ pi, xt ~ q_t(. | x0)."""
    values: dict[str, list[torch.Tensor]] = {m: [] for m in METRICS}
    for start in range(0, num_samples, chunk):
        n = min(chunk, num_samples - start)
        x0 = torch.multinomial(prior, n, replacement=True, generator=generator)
        xt, _ = kernel.sample_xt(x0[None, :], torch.full((1,), t, dtype=torch.float64), generator=generator)
        post = posterior_eq57(prior, kernel.likelihood_of(xt[0], t))
        for name, v in posterior_metrics(post, eps).items():
            values[name].append(v)
    out = {}
    for name, parts in values.items():
        v = torch.cat(parts)
        out[name] = (float(v.mean()), float(v.std() / math.sqrt(v.numel())))
    return out


# --------------------------------------------------------------------------- driver
def kernel_for(name: str, tables, mask_id: int | None) -> tuple[Kernel, dict]:
    """The preset kernel ``name`` on the neighbour tables (a NeighborTables), fitted to their width."""
    cfg = KernelConfig.preset(name).fitted_to_table(tables.k_max)
    return make_kernel(cfg, tables.vocab_size, mask_id, tables), cfg.to_dict()


def diagnose(tables, mask_id: int | None, cfg: DiagnoseConfig, progress: bool | None = None
             ) -> tuple[list[dict], dict]:
    """Rows (kernel, t, metric means [and stderrs]) and per-kernel summaries on ``tables``
    (a :class:`pipeline.common.neighbor_artifact.NeighborTables`)."""
    from tqdm import tqdm

    progress = cfg.progress if progress is None else progress
    prior = tables.unigram_prior.to(torch.float64)
    prior = prior / prior.sum()
    generator = torch.Generator().manual_seed(cfg.seed)
    rows, kernel_cfgs = [], {}
    jobs = [(name, float(t)) for name in cfg.kernels for t in cfg.t_grid()]
    kernels = {}
    for name, t in tqdm(jobs, desc="diagnose", file=sys.stderr, disable=not progress):
        if name not in kernels:
            kernels[name], kernel_cfgs[name] = kernel_for(name, tables, mask_id)
        row = {"kernel": name, "t": t}
        if cfg.method == "exact":
            for metric, v in exact_expected_metrics(kernels[name], prior, t, cfg.eps, cfg.chunk).items():
                row[metric], row[metric + "_se"] = v, 0.0
        else:
            for metric, (v, se) in monte_carlo_expected_metrics(kernels[name], prior, t, cfg.eps,
                                                                 cfg.mc_samples, generator).items():
                row[metric], row[metric + "_se"] = v, se
        rows.append(row)
    return rows, summarise(rows, cfg, kernel_cfgs)


def summarise(rows: list[dict], cfg: DiagnoseConfig, kernel_cfgs: dict) -> dict:
    by_kernel = {name: [r for r in rows if r["kernel"] == name] for name in cfg.kernels}
    summary = {"kernels": {}, "ordering": {}, "kernel_configs": kernel_cfgs}
    for name, rs in by_kernel.items():
        h = torch.tensor([r["entropy"] for r in rs], dtype=torch.float64)
        summary["kernels"][name] = {**{f"mean_{m}": sum(r[m] for r in rs) / len(rs) for m in METRICS},
                                    "dispersion_D": kernel_dispersion(h)}
    # Eq 17: mask <= sem <= uni, per t and for the t-average, for each semantic kernel present: the
    # absorbing kernel and the purely global one bracket every kernel with a neighbour branch.
    traits = {k: KernelConfig.preset(k).traits for k in cfg.kernels}
    absorbing = [k for k in cfg.kernels if traits[k].absorbing]
    global_only = [k for k in cfg.kernels if not traits[k].absorbing and not traits[k].needs_neighbors]
    if absorbing and global_only:
        low, high = absorbing[0], global_only[0]
        for sem in [k for k in cfg.kernels if traits[k].needs_neighbors]:
            for metric in ("d_act", "d_act_eps", "I1"):
                tol = 1e-9
                per_t = [m[metric] <= s[metric] + tol and s[metric] <= u[metric] + tol
                         for m, s, u in zip(by_kernel[low], by_kernel[sem], by_kernel[high])]
                means = [summary["kernels"][k][f"mean_{metric}"] for k in (low, sem, high)]
                summary["ordering"][f"{sem}:{metric}"] = {
                    "holds_on_average": means[0] <= means[1] + tol and means[1] <= means[2] + tol,
                    "holds_at_t_points": f"{sum(per_t)}/{len(per_t)}"}
    return summary


def markdown_summary(summary: dict, cfg: DiagnoseConfig, vocab: str) -> str:
    lines = [f"Kernel diagnostics on {vocab}; method={cfg.method}, {cfg.num_t} t points, eps={cfg.eps:g}", "",
             "| kernel | E[d_act] | E[d_act,eps] | E[I1] | E[I2] | E[H] (nats) | D(Q) |",
             "|---|---|---|---|---|---|---|"]
    for name, s in summary["kernels"].items():
        lines.append(f"| {name} | {s['mean_d_act']:.1f} | {s['mean_d_act_eps']:.1f} | {s['mean_I1']:.4g} | "
                     f"{s['mean_I2']:.4g} | {s['mean_entropy']:.4g} | {s['dispersion_D']:.4g} |")
    if summary["ordering"]:
        lines += ["", "Eq 17 ordering mask <= sem <= uni:", "",
                  "| semantic kernel : metric | holds (t-average) | holds at t points |", "|---|---|---|"]
        for key, v in summary["ordering"].items():
            lines.append(f"| {key} | {'yes' if v['holds_on_average'] else 'NO'} | {v['holds_at_t_points']} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, kernels: tuple[str, ...]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(20, 3.8))
    for ax, metric in zip(axes, METRICS):
        for name in kernels:
            rs = [r for r in rows if r["kernel"] == name]
            ax.errorbar([r["t"] for r in rs], [r[metric] for r in rs], yerr=[r[metric + "_se"] for r in rs],
                        marker=".", label=name)
        ax.set_xlabel("t")
        ax.set_title(f"E[{metric}]")
        if metric.startswith("d_act"):
            ax.set_yscale("symlog")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def resolve_mask_id(mask_id: int | None, manifest: dict) -> int | None:
    """``mask_id`` if given, else the [MASK] id of the artifact's tokenizer, else of the default one."""
    if mask_id is not None:
        return mask_id
    special = ((manifest or {}).get("tokenizer") or {}).get("special_ids") or {}
    if "mask" in special:
        return int(special["mask"])
    from pipeline.common.hf_assets import load_tokenizer_spec
    return load_tokenizer_spec().special_ids.get("mask")


def run_diagnose(cfg: DiagnoseConfig, neighbors: str | os.PathLike, out: str | os.PathLike,
                 force: bool = False, log=print, break_lock: bool = False) -> Path:
    """Diagnose the kernels of ``cfg`` on the neighbour artifact ``neighbors`` into the artifact ``out``
    (diagnostics.csv, summary.md, diagnostics.png); logs the summary table."""
    from pipeline.common.neighbor_artifact import load_neighbor_tables

    out = Path(out)
    nb = load_neighbor_tables(neighbors)
    absorbing = any(KernelConfig.preset(k).absorbing for k in cfg.kernels)
    mask_id = resolve_mask_id(cfg.mask_id, nb.manifest) if absorbing else None
    run = StageRun(STAGE, out, config={**cfg.artifact_config(), "mask_id": mask_id},
                   upstream={"neighbor_index": Path(neighbors)}, force=force,
                   break_lock=break_lock)
    if run.is_up_to_date():
        log(f"{out}: up to date")
        log((out / "summary.md").read_text())
        return out
    with run.locked():  # before the computation: a second job on ``out`` stops here
        rows, summary = diagnose(nb, mask_id, cfg)
        text = markdown_summary(summary, cfg, f"V={nb.vocab_size}, table k={nb.k_max}, "
                                f"|S|={int((nb.unigram_prior > 0).sum())}")
        with run as tmp:
            write_csv(tmp / "diagnostics.csv", rows)
            (tmp / "summary.md").write_text(text)
            plot(rows, tmp / "diagnostics.png", cfg.kernels)
            run.extra["summary"] = summary
    log(text)
    return out


if __name__ == "__main__":  # the command is python -m pipeline.diagnose; this module is its library
    raise SystemExit(library_not_a_command(__spec__.name, "pipeline.diagnose"))
