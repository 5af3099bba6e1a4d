"""The study's figures (PNG, matplotlib Agg): the paper's Figures 1-7 drawn from a study's artifacts.

Each function draws what it has and returns the file name, or None when its experiment left no data.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from . import collect  # noqa: E402
from .plan import Plan  # noqa: E402


def _save(fig, out: Path, name: str) -> str:
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def steps_figure(plan: Plan, out: Path) -> str | None:
    """Figs 6-7: Gen-PPL and entropy against sampling steps, one line per kernel."""
    cells = collect.table3(plan)
    if not cells:
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    for kernel, by_steps in cells.items():
        steps = sorted(by_steps)
        a.plot(steps, [by_steps[s].get("gen_ppl") for s in steps], "o-", label=kernel)
        b.plot(steps, [by_steps[s].get("entropy_mean") for s in steps], "o-", label=kernel)
    for ax, title in ((a, "Gen-PPL"), (b, "sample entropy (nats)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sampling steps")
        ax.set_title(title)
    a.set_yscale("log")
    a.legend()
    return _save(fig, out, "table3_steps.png")


def gamma_figure(plan: Plan, out: Path) -> str | None:
    """Figs 1-2: test perplexity and Gen-PPL against gamma."""
    runs = [r for r in plan.runs.get("gamma", []) if r.seed == plan.spec.seeds[0]]
    points = []
    for run in runs:
        res = collect.eval_results(plan, run)
        if res and res.get("nelbo"):
            rows = res.get("sweep") or [{}]
            points.append((dict(run.overrides)["k_power"], res["nelbo"]["perplexity"], rows[0].get("gen_ppl")))
    if not points:
        return None
    points.sort()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot([p[0] for p in points], [p[1] for p in points], "o-")
    b.plot([p[0] for p in points], [p[2] for p in points], "o-")
    for ax, title in ((a, "test PPL (upper bound)"), (b, "Gen-PPL")):
        ax.set_xlabel("gamma")
        ax.set_yscale("log")
        ax.set_title(title)
    return _save(fig, out, "gamma.png")


def penalty_figure(plan: Plan, out: Path) -> str | None:
    """Figs 4-5: Gen-PPL and entropy over the lambda_freq x lambda_sem grid."""
    if "penalty" not in plan.runs:
        return None
    rows = collect.sample_rows(plan, plan.runs["penalty"][0], "penalty")
    if not rows:
        return None
    lf = sorted({r["lambda_freq"] for r in rows})
    ls = sorted({r["lambda_sem"] for r in rows})
    grid = {(r["lambda_freq"], r["lambda_sem"]): r for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, key, title in ((axes[0], "gen_ppl", "Gen-PPL"), (axes[1], "entropy_mean", "sample entropy (nats)")):
        values = [[grid.get((f, s), {}).get(key, math.nan) for s in ls] for f in lf]
        im = ax.imshow(values, origin="lower", aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(ls)), [f"{v:g}" for v in ls])
        ax.set_yticks(range(len(lf)), [f"{v:g}" for v in lf])
        ax.set_xlabel("lambda_sem")
        ax.set_ylabel("lambda_freq")
        ax.set_title(title)
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.3g}", ha="center", va="center", color="w", fontsize=8)
        fig.colorbar(im, ax=ax)
    return _save(fig, out, "penalty.png")


def convergence_figure(plan: Plan, out: Path) -> str | None:
    """Fig 1 (convergence): validation bound against step and tokens, one line per kernel."""
    curves = collect.convergence_curves(plan)
    if not curves:
        return None
    tokens_per_step = plan.spec.train.global_batch * plan.spec.data.seq_len
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, curve in curves.items():
        ax.plot([s * tokens_per_step for s, _ in curve], [v for _, v in curve], "o-", label=label)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation bound (nats/token)")
    ax.legend(fontsize=7)
    return _save(fig, out, "convergence.png")


def dispersion_figure(plan: Plan, out: Path) -> str | None:
    """Fig 3: gradient variance against kernel dispersion."""
    points = collect.dispersion_points(plan)
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(5, 4))
    for kernel, d, g in points:
        ax.scatter([d], [g])
        ax.annotate(kernel, (d, g))
    ax.set_xlabel("dispersion D(Q) (App B.6.2)")
    ax.set_ylabel("relative gradient variance")
    return _save(fig, out, "dispersion.png")


def all_figures(plan: Plan, out: Path) -> list[str]:
    made = [f(plan, out) for f in (convergence_figure, steps_figure, gamma_figure, penalty_figure, dispersion_figure)]
    return [m for m in made if m]
