"""Read a study's artifacts back into the numbers its tables, figures and claims need.

Nothing here computes a bound or a sample: every number comes from a cell's own artifact (evaluate's
results.json, the run's metrics.jsonl, diagnose's diagnostics.csv). A missing artifact gives None, so a
partial study (``--only``, a failed cell) still reports what it has.
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from collections import defaultdict

from pipeline.common.run_metrics import read_metrics, series

from .plan import Plan, Run


def eval_results(plan: Plan, run: Run, where: str = "eval") -> dict | None:
    path = plan.out / where / run.name / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def metrics(plan: Plan, run: Run) -> list[dict]:
    return read_metrics(plan.out / "runs" / run.name / "metrics.jsonl")


def val_curve(plan: Plan, run: Run) -> list[tuple[int, float]]:
    """(step, validation bound in nats/token) at every validation of the run."""
    return series(metrics(plan, run), "val/nelbo")


def convergence_curves(plan: Plan) -> dict[str, list[tuple[int, float]]]:
    """label -> validation curve of every convergence and table2 model (first seed), in plan order."""
    runs = {r.name: r for r in plan.runs.get("convergence", []) + plan.runs.get("table2", [])
            if r.seed == plan.spec.seeds[0]}
    curves = {r.label: val_curve(plan, r) for r in runs.values()}
    return {label: curve for label, curve in curves.items() if curve}


def gradient_variance(plan: Plan, run: Run) -> float | None:
    """The relative gradient variance of the run's last probe, averaged over its t buckets (Fig 3)."""
    probes = [m for m in metrics(plan, run) if any(k.startswith("gradvar_rel/") for k in m)]
    if not probes:
        return None
    last = probes[-1]
    values = [v for k, v in last.items() if k.startswith("gradvar_rel/")]
    return sum(values) / len(values)


def dispersions(plan: Plan) -> dict[str, float]:
    """D(Q) = Var_t h(t; Q) of each kernel (App B.6.2), from the diagnose cell's per-t entropies."""
    path = plan.out / "diagnose" / "diagnostics.csv"
    if not path.is_file():
        return {}
    h: dict[str, list[float]] = defaultdict(list)
    with open(path) as fh:
        for row in csv.DictReader(fh):
            h[row["kernel"]].append(float(row["entropy"]))
    return {k: statistics.pvariance(v) for k, v in h.items() if len(v) > 1}


def dispersion_points(plan: Plan) -> list[tuple[str, float, float]]:
    """(kernel, D(Q), relative gradient variance) of every dispersion run that has both."""
    disp = dispersions(plan)
    points = [(r.kernel, disp.get(r.kernel), gradient_variance(plan, r)) for r in plan.runs.get("dispersion", [])]
    return [p for p in points if p[1] is not None and p[2] is not None]


def _group(runs: list[Run]) -> dict[tuple, list[Run]]:
    """Runs that differ only by seed, together (first-seen order)."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault((run.kernel, run.loss, run.overrides), []).append(run)
    return groups


def likelihood_row(plan: Plan, runs: list[Run]) -> dict | None:
    """The test bound of one model over its seeds: mean, standard error, seed spread, the unigram reference."""
    found = [(r, eval_results(plan, r)) for r in runs]
    found = [(r, res) for r, res in found if res and res.get("nelbo")]
    if not found:
        return None
    nelbos = [res["nelbo"] for _, res in found]
    nats = [n["nats_per_token"] for n in nelbos]
    ses = [n.get("stderr") or 0.0 for n in nelbos]
    mean = sum(nats) / len(nats)
    spread = statistics.stdev(nats) if len(nats) > 1 else None
    # the error of the mean over seeds: the t-draw errors, plus the seed-to-seed spread when there is one
    se = math.sqrt(sum(s * s for s in ses)) / len(ses)
    if spread is not None:
        se = math.sqrt(se * se + spread * spread / len(nats))
    seq_ses = [n.get("stderr_sequences") for n in nelbos]
    seq_se = math.sqrt(sum(s * s for s in seq_ses)) / len(seq_ses) if None not in seq_ses else None
    uni = nelbos[0].get("unigram")
    return {"label": found[0][0].label, "kernel": found[0][0].kernel, "loss": found[0][0].loss,
            "nats_per_token": mean, "stderr": se, "stderr_sequences": seq_se, "seed_spread": spread,
            "seeds": len(found),
            "perplexity": math.exp(mean), "bound": nelbos[0]["bound"], "tokens": nelbos[0]["tokens"],
            "uncorrected": {k: v for k, v in nelbos[0].get("candidates", {}).items() if "uncorrected" in k},
            "unigram": uni, "eval_sets": {name: s["nats_per_token"]
                                          for name, s in (found[0][1].get("eval_sets") or {}).items()}}


def table2(plan: Plan) -> list[dict]:
    return [row for runs in _group(plan.runs.get("table2", [])).values()
            if (row := likelihood_row(plan, runs)) is not None]


def sample_rows(plan: Plan, run: Run, where: str = "eval") -> list[dict]:
    res = eval_results(plan, run, where)
    return (res or {}).get("sweep") or []


def log_ppl_stats(row: dict) -> tuple[float, float]:
    """(mean, standard error) of the per-sample log Gen-PPL of a sweep row (the judge's per-sample NLLs)."""
    logs = [math.log(p) for p in row.get("per_sample_ppl") or [] if p]
    if len(logs) < 2:
        return (math.log(row["gen_ppl"]) if row.get("gen_ppl") else math.nan), math.nan
    return statistics.fmean(logs), statistics.stdev(logs) / math.sqrt(len(logs))


def entropy_stats(row: dict) -> tuple[float, float]:
    values = row.get("entropy_per_sample") or []
    if len(values) < 2:
        return row.get("entropy_mean", math.nan), math.nan
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def table3(plan: Plan) -> dict[str, dict[int, dict]]:
    """kernel -> steps -> the evaluate sweep row (Gen-PPL, entropy, ...) of the first seed of every table3 model."""
    out: dict[str, dict[int, dict]] = {}
    for runs in _group(plan.runs.get("table3", [])).values():
        rows = sample_rows(plan, runs[0])
        if rows:
            out[runs[0].kernel] = {r["steps"]: r for r in rows}
    return out
