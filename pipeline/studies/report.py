"""The study report: OUT/report/{report.md, results.json, *.png} from the cells' artifacts.

Tables 2 and 3 with our number ± its error (and the paper's beside it for a paper preset), the gamma,
penalty, convergence and dispersion experiments, one line per paper claim (claims.py), whether every
model learned, and the settings every cell shares and those that differ.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

from pipeline.common.artifacts import StageRun

from . import collect
from .claims import all_claims, learned_lines
from .figures import all_figures
from .plan import Plan

# The paper's numbers (Tables 2 and 3; PPL). Table 3's uniform row mixes models across columns; left out.
PAPER = {
    "lm1b": {"table2": {"mask": 31.78, "uniform": 88.03, "semdlm": 149.50, "semdlm_plus": 27.19},
             "table3": {"mask": {128: 93.69, 256: 85.24, 512: 78.02},
                        "semdlm_plus": {128: 74.52, 256: 54.08, 512: 36.60}}},
    "owt": {"table2": {},
            "table3": {"mask": {128: 76.50, 256: 64.20, 512: 50.70, 1024: 43.00},
                       "semdlm_plus": {128: 64.39, 256: 62.72, 512: 41.91, 1024: 34.37}}},
}
PAPER_ENTROPY_FILTER = 4.8  # Sec 5.2: only samples at or above 4.8 nats are reported


def entropy_filter(plan: Plan) -> float:
    """The entropy filter of Table 3: the spec's, else the paper's 4.8 at the paper's sample length, scaled by
    ln L / ln L_paper for other lengths L (the same share of the maximum ln L a sample can reach; 4.8 is 99 %
    of ln 128 for LM1B and 69 % of ln 1024 for OWT). Documented in docs/study.md."""
    t3 = plan.spec.section("table3")
    if t3 and t3.entropy_filter is not None:
        return t3.entropy_filter
    paper_len = 128 if plan.spec.data.mode == "lm1b" else 1024
    return PAPER_ENTROPY_FILTER * math.log(plan.spec.data.seq_len) / math.log(paper_len)


def _f(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}" if abs(v) < 1e4 else f"{v:.3g}"


def settings_lines(plan: Plan) -> list[str]:
    spec = plan.spec
    shared = {"data": asdict(spec.data), "train": asdict(spec.train), "eval": asdict(spec.eval),
              "seeds": list(spec.seeds), "judge": spec.judge}
    lines = ["## Settings", "", "Shared by every cell:", "", "```json", json.dumps(shared, indent=1, default=str),
             "```", "", "What differs (one trained model per row):", "", "| run | kernel | loss | settings | seed |",
             "|---|---|---|---|---|"]
    seen = set()
    for runs in plan.runs.values():
        for r in runs:
            if r.name not in seen:
                seen.add(r.name)
                extra = ", ".join(f"{k}={v}" for k, v in r.overrides) or "-"
                lines.append(f"| {r.name} | {r.kernel or 'AR'} | {r.loss or 'next-token'} | {extra} | {r.seed} |")
    return lines


def table2_lines(plan: Plan) -> list[str]:
    rows = collect.table2(plan)
    if not rows:
        return []
    paper = PAPER.get(plan.spec.paper or "", {}).get("table2", {})
    lines = ["## Table 2: test likelihood", "",
             "| model | bound | nats/token ± s.e. | s.e. over sequences | seed spread | PPL ≤ | paper PPL "
             "| uncorrected | unigram: train H / same tokens | frequency floor (slack) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        u = r.get("unigram") or {}
        unc = ", ".join(f"{_f(v)}" for v in r["uncorrected"].values()) or "-"
        floor = u.get("frequency_floor")
        floor_cell = f"{_f(floor['nats_per_token'])} ({floor['slack']:+.3f})" if floor else "-"
        lines.append(f"| {r['label']} | {r['bound']} | {_f(r['nats_per_token'])} ± {_f(r['stderr'])} | "
                     f"{_f(r.get('stderr_sequences'))} | {_f(r['seed_spread'])} | {_f(r['perplexity'], 1)} | "
                     f"{_f(paper.get(r['kernel']), 2)} | {unc} | "
                     f"{_f(u.get('train_entropy'))} / {_f(u.get('nats_per_token'))} | {floor_cell} |")
    sets = sorted({name for r in rows for name in r["eval_sets"]})
    if sets:
        lines += ["", "Eval sets (nats/token of the tightest bound): " + "; ".join(
            f"{r['label']}: " + ", ".join(f"{s} {_f(r['eval_sets'].get(s))}" for s in sets) for r in rows)]
    lines += ["", "Each model is scored by its tightest valid bound (evaluate's `bound`); s.e.: the Monte Carlo "
              "error over the t draws on these test sequences (and over seeds when there are several), what "
              "the claims read, all models being scored on the same sequences; s.e. over sequences: as an "
              "estimate for the data distribution (docs/sampling.md, Standard errors); `uncorrected`: a "
              "change-aware model read without the correction (docs/likelihood.md Sec 7.4); frequency floor: "
              "the kernel's bound for a denoiser that knows only token frequencies, on the same draws, and its "
              "slack over the unigram cross-entropy of the same tokens (docs/sampling.md, Frequency floor; "
              "none for mask, whose bound is exact at zero context)."]
    return lines


def table3_lines(plan: Plan, threshold: float) -> list[str]:
    cells = collect.table3(plan)
    t3 = plan.spec.section("table3")
    if not cells or not t3:
        return []
    paper = PAPER.get(plan.spec.paper or "", {}).get("table3", {})
    steps = list(t3.steps)
    lines = ["## Table 3: generative perplexity and entropy against sampling steps", "",
             "| kernel | " + " | ".join(f"{s} steps" for s in steps) + " |", "|---|" + "---|" * len(steps)]
    for kernel, by_steps in cells.items():
        row = []
        for s in steps:
            r = by_steps.get(s)
            if r is None:
                row.append("-")
                continue
            flag = "" if r["entropy_mean"] >= threshold else " †"
            ref = f" (paper {paper[kernel][s]:.2f})" if s in paper.get(kernel, {}) else ""
            row.append(f"{_f(r.get('gen_ppl'), 1)} / H {_f(r['entropy_mean'], 2)}{flag}{ref}")
        lines.append(f"| {kernel} | " + " | ".join(row) + " |")
    lines += ["", f"Gen-PPL under the judge / mean sample entropy (nats); † below the entropy filter {threshold:.2f} "
              "(the paper reports only cells at or above it; docs/study.md says how the filter scales with length)."]
    return lines


def gamma_lines(plan: Plan) -> list[str]:
    rows = []
    for run in plan.runs.get("gamma", []):
        res = collect.eval_results(plan, run)
        if res and res.get("nelbo"):
            sweep = res.get("sweep") or [{}]
            rows.append(f"| {dict(run.overrides)['k_power']:g} | {run.seed} | {_f(res['nelbo']['nats_per_token'])} ± "
                        f"{_f(res['nelbo'].get('stderr'))} | {_f(res['nelbo']['perplexity'], 1)} | "
                        f"{_f(sweep[0].get('gen_ppl'), 1)} | {_f(sweep[0].get('entropy_mean'), 2)} |")
    if not rows:
        return []
    return ["## Gamma (Figs 1-2)", "", "| gamma | seed | test bound ± s.e. | PPL ≤ | Gen-PPL | entropy |",
            "|---|---|---|---|---|---|", *rows]


def penalty_lines(plan: Plan) -> list[str]:
    if "penalty" not in plan.runs:
        return []
    rows = collect.sample_rows(plan, plan.runs["penalty"][0], "penalty")
    if not rows:
        return []
    lines = ["## Penalty grid (Figs 4-5)", "", "| lambda_freq | lambda_sem | Gen-PPL | entropy | repetition |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['lambda_freq']:g} | {r['lambda_sem']:g} | {_f(r.get('gen_ppl'), 1)} | {_f(r['entropy_mean'])} | "
              f"{_f(r['repetition_rate'])} |" for r in rows]
    return lines


def sweep_lines(plan: Plan) -> list[str]:
    """One table per ``sweeps`` entry: the test bound and samples at each value of its setting."""
    lines = []
    for sweep in plan.spec.section("sweeps") or ():
        rows = []
        for run in plan.runs.get(f"sweep:{sweep.name}", []):
            res = collect.eval_results(plan, run)
            if res and res.get("nelbo"):
                first = (res.get("sweep") or [{}])[0]
                rows.append(f"| {dict(run.overrides)[sweep.key]} | {run.seed} | {_f(res['nelbo']['nats_per_token'])} ± "
                            f"{_f(res['nelbo'].get('stderr'))} | {_f(first.get('gen_ppl'), 1)} | "
                            f"{_f(first.get('entropy_mean'), 2)} |")
        if rows:
            lines += [f"## Sweep `{sweep.name}`: {sweep.kernel} ({sweep.loss}) over `{sweep.key}`", "",
                      f"| {sweep.key} | seed | test bound ± s.e. | Gen-PPL | entropy |", "|---|---|---|---|---|",
                      *rows, ""]
    return lines


def dispersion_lines(plan: Plan) -> list[str]:
    points = collect.dispersion_points(plan)
    if not points:
        return []
    return ["## Dispersion and gradient variance (Fig 3)", "",
            "| kernel | D(Q) = Var_t h(t) | relative gradient variance (last probe, mean over t buckets) |",
            "|---|---|---|", *(f"| {k} | {_f(d, 4)} | {_f(g, 4)} |" for k, d, g in points)]


def convergence_lines(plan: Plan) -> list[str]:
    curves = collect.convergence_curves(plan)
    if not curves:
        return []
    steps = sorted({s for c in curves.values() for s, _ in c})
    lines = ["## Convergence: validation bound (nats/token) against step", "",
             "| model | " + " | ".join(str(s) for s in steps) + " |", "|---|" + "---|" * len(steps)]
    for label, curve in curves.items():
        d = dict(curve)
        lines.append(f"| {label} | " + " | ".join(_f(d.get(s)) for s in steps) + " |")
    return lines


def write_study_report(plan: Plan, command: str, wall_s: float | None = None) -> Path:
    """Write OUT/report/ as an artifact (stage "study_report": written whole into a temporary sibling and
    swapped in, with a manifest naming the cells it read) and return it. Always rewritten: the cells'
    artifacts may have changed under the same keys (a partial study, a failed cell rerun)."""
    final = plan.out / "report"
    cells = {c.name: {"key": c.key, "out": str(c.out)} for c in plan.ordered()}
    run = StageRun("study_report", final, config={"spec": plan.spec.name, "cells": cells}, force=True)
    with run as tmp:
        threshold = entropy_filter(plan)
        claims = all_claims(plan, threshold)
        figures = all_figures(plan, tmp)
        lines = [f"# Study `{plan.spec.name}`", "", f"- command: `{command}`", f"- spec: `{plan.spec.source}`",
                 f"- written: {time.strftime('%Y-%m-%d %H:%M:%S')}"
                 + (f", study wall time {wall_s / 60:.1f} min" if wall_s else ""), ""]
        lines += ["## Claims", "", *[c.line() for c in claims], ""]
        learned = learned_lines(plan)
        if learned:
            lines += ["## Does every model learn? (bound vs the training data's unigram entropy)", "", *learned, ""]
        for section in (table2_lines(plan), table3_lines(plan, threshold), gamma_lines(plan), penalty_lines(plan),
                        convergence_lines(plan), dispersion_lines(plan), sweep_lines(plan)):
            if section:
                lines += [*section, ""]
        lines += [f"![{f}]({f})" for f in figures] + [""] + settings_lines(plan)
        (tmp / "report.md").write_text("\n".join(lines) + "\n")
        results = {"spec": plan.spec.name, "table2": collect.table2(plan), "table3": collect.table3(plan),
                   "claims": [asdict(c) for c in claims], "entropy_filter": threshold, "figures": figures,
                   "cells": cells}
        (tmp / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    return final
