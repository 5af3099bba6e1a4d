"""The paper's claims, each tested on a study's numbers: holds / does not hold / inconclusive at this budget.

Every test is a difference with its standard error, read at two standard errors (about 95 % two-sided):
``holds`` when the difference favours the claim by more than that, ``does not hold`` when it goes the
other way by more than that, ``inconclusive`` otherwise or when a number is missing. docs/study.md states
each test; the report prints the numbers it used beside the verdict.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from . import collect
from .plan import Plan, default_loss

Z = 2.0  # standard errors a difference must exceed to decide
# The subjects of the paper's claims (Sec 5.2-5.3): the kernels the claims name, not a behaviour switch.
OURS, MDLM, UNIFORM = "semdlm_plus", "mask", "uniform"


@dataclass
class Claim:
    name: str
    statement: str
    verdict: str  # holds | does not hold | inconclusive
    evidence: str

    def line(self) -> str:
        return f"- **{self.statement}** ({self.name}): **{self.verdict}**. {self.evidence}"


def decide(diff: float, se: float) -> str:
    """diff < 0 favours the claim."""
    if diff is None or se is None or math.isnan(diff) or math.isnan(se):
        return "inconclusive"
    if diff < -Z * se:
        return "holds"
    if diff > Z * se:
        return "does not hold"
    return "inconclusive"


def _row(rows: list[dict], kernel: str) -> dict | None:
    return next((r for r in rows if r["kernel"] == kernel and r["loss"] == default_loss(kernel)), None)


def table2_claim(plan: Plan) -> Claim:
    statement = "SemDLM+ has a lower test perplexity than MDLM (Table 2)"
    rows = collect.table2(plan)
    sp, mask = _row(rows, OURS), _row(rows, MDLM)
    if not sp or not mask:
        return Claim("table2", statement, "inconclusive", "Needs the semdlm_plus (change_aware) and mask rows.")
    diff = sp["nats_per_token"] - mask["nats_per_token"]
    se = math.hypot(sp["stderr"], mask["stderr"])
    floor = (sp.get("unigram") or {}).get("frequency_floor")
    slack = (f" The semdlm_plus bound is {floor['slack']:+.3f} nats/token above the unigram cross-entropy for a "
             "frequency-only denoiser (its frequency floor); mask's bound has no such slack: part of the "
             "difference is the bound's, not the model's." if floor else "")
    return Claim("table2", statement, decide(diff, se),
                 f"Bound difference semdlm_plus - mask = {diff:+.3f} ± {se:.3f} nats/token ({sp['bound']} "
                 f"{sp['nats_per_token']:.3f} vs {mask['bound']} {mask['nats_per_token']:.3f}, same test "
                 f"sequences).{slack}")


def table3_claim(plan: Plan) -> Claim:
    statement = "SemDLM+'s Gen-PPL improves more with sampling steps than MDLM's (Table 3, Fig 6)"
    t3 = plan.spec.section("table3")
    by_kernel = collect.table3(plan)
    if not t3 or not {OURS, MDLM} <= set(by_kernel) or len(t3.steps) < 2:
        return Claim("table3", statement, "inconclusive", "Needs semdlm_plus and mask samples at two step counts.")
    lo, hi = min(t3.steps), max(t3.steps)
    change, ses = {}, []
    for kernel in (OURS, MDLM):
        (a, sa), (b, sb) = (collect.log_ppl_stats(by_kernel[kernel][s]) for s in (hi, lo))
        change[kernel] = a - b
        ses += [sa, sb]
    diff = change[OURS] - change[MDLM]
    se = math.sqrt(sum(s * s for s in ses))
    return Claim("table3", statement, decide(diff, se),
                 f"Change of mean log Gen-PPL from {lo} to {hi} steps: semdlm_plus {change[OURS]:+.3f}, "
                 f"mask {change[MDLM]:+.3f}; difference {diff:+.3f} ± {se:.3f} (per-sample judge NLLs).")


def penalty_claim(plan: Plan, threshold: float) -> Claim:
    statement = ("without the penalty a semantic kernel falls into low-entropy basins and the penalty restores "
                 "entropy (Figs 4-5)")
    p = plan.spec.section("penalty")
    rows = collect.sample_rows(plan, plan.runs["penalty"][0], "penalty") if p else []
    grid = {(r["lambda_freq"], r["lambda_sem"]): r for r in rows}
    strongest = (max(p.lambda_freq), max(p.lambda_sem)) if p else None
    if not rows or (0.0, 0.0) not in grid or strongest not in grid:
        return Claim("penalty", statement, "inconclusive", "Needs the (0, 0) cell and the strongest penalty cell.")
    (h0, s0), (h1, s1) = collect.entropy_stats(grid[(0.0, 0.0)]), collect.entropy_stats(grid[strongest])
    diff, se = h0 - h1, math.hypot(s0, s1)
    collapsed = h0 < threshold
    verdict = decide(diff, se)
    if verdict == "holds" and not collapsed:
        verdict = "does not hold"  # the penalty raises entropy, but there was no basin to escape
    return Claim("penalty", statement, verdict,
                 f"Mean sample entropy {h0:.3f} ± {s0:.3f} without the penalty (entropy filter {threshold:.2f}: "
                 f"{'below, a collapsed regime' if collapsed else 'above, no collapse'}), {h1:.3f} ± {s1:.3f} at "
                 f"lambda_freq={strongest[0]:g}, lambda_sem={strongest[1]:g}.")


def convergence_claim(plan: Plan) -> Claim:
    statement = "SemDLM+ converges faster than uniform (Fig 1)"
    runs = {r.kernel: r for r in plan.runs.get("convergence", []) if r.seed == plan.spec.seeds[0]}
    if not {OURS, UNIFORM} <= set(runs):
        return Claim("convergence", statement, "inconclusive", "Needs semdlm_plus and uniform training runs.")
    sp, uni = dict(collect.val_curve(plan, runs[OURS])), dict(collect.val_curve(plan, runs[UNIFORM]))
    steps = sorted(set(sp) & set(uni))
    late = steps[len(steps) // 2:]
    if not late:
        return Claim("convergence", statement, "inconclusive", "No common validation steps.")
    diffs = [sp[s] - uni[s] for s in late]
    verdict = "holds" if all(d < 0 for d in diffs) else "does not hold" if all(d > 0 for d in diffs) else \
        "inconclusive"
    return Claim("convergence", statement, verdict,
                 "Validation bound semdlm_plus - uniform over the second half of training (no standard error: "
                 "the same validation batches at every step): "
                 + ", ".join(f"step {s}: {d:+.3f}" for s, d in zip(late, diffs)) + "." + _slack_note(plan))


def _slack_note(plan: Plan) -> str:
    """The two kernels' frequency-floor slack (Table 2's test rows), when both were measured: a part of any
    bound difference between them that belongs to the bounds, not to what the models learned."""
    rows = collect.table2(plan) if plan.spec.section("table2") else []
    slack = {k: ((_row(rows, k) or {}).get("unigram") or {}).get("frequency_floor", {}).get("slack")
             for k in (OURS, UNIFORM)}
    if None in slack.values():
        return ""
    return (f" The bounds start from different floors: a frequency-only denoiser scores "
            f"{slack[OURS]:+.3f} nats/token above the unigram cross-entropy under semdlm_plus and "
            f"{slack[UNIFORM]:+.3f} under uniform (Table 2, frequency floor), so about "
            f"{slack[OURS] - slack[UNIFORM]:+.3f} of the difference is the bounds', not the models'.")


def spearman(xs: list[float], ys: list[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        for i, j in enumerate(order):
            r[j] = float(i)
        return r
    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    den = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return num / den if den else math.nan


def dispersion_claim(plan: Plan) -> Claim:
    statement = "kernel dispersion orders gradient variance (Fig 3)"
    points = collect.dispersion_points(plan)
    if len(points) < 3:
        return Claim("dispersion", statement, "inconclusive", "Needs three kernels with a dispersion and a probe.")
    rho = spearman([p[1] for p in points], [p[2] for p in points])
    verdict = "holds" if rho == 1.0 else "does not hold" if rho <= 0 else "inconclusive"
    return Claim("dispersion", statement, verdict,
                 f"Spearman rank correlation {rho:+.2f} over " + ", ".join(
                     f"{k} (D {d:.3g}, relative gradient variance {g:.3g})" for k, d, g in points)
                 + " (holds only for a perfect ordering: a handful of points).")


def learned_lines(plan: Plan) -> list[str]:
    """Every model's bound against its training data's unigram entropy (does it learn at this budget?)."""
    lines = []
    for row in collect.table2(plan):
        u = row.get("unigram")
        if not u:
            continue
        ok = row["nats_per_token"] < u["train_entropy"]
        paired = (f", {u['margin_nats']:+.3f} ± {u['margin_stderr']:.3f} below it, paired over sequences"
                  if u.get("margin_stderr") else "")
        f = u.get("frequency_floor")
        floor = (f" Its kernel's bound reads {f['nats_per_token']:.3f} for a frequency-only denoiser (slack "
                 f"{f['slack']:+.3f}); the model is {f['margin_nats']:+.3f} ± {f['margin_stderr']:.3f} below that."
                 if f and f.get("margin_stderr") is not None else "")
        lines.append(f"- {row['label']}: {row['nats_per_token']:.3f} ± {row['stderr']:.3f} nats/token, "
                     f"{'below' if ok else 'ABOVE'} the training unigram entropy {u['train_entropy']:.3f} "
                     f"(held-out unigram on the same tokens {u['nats_per_token']:.3f}{paired}).{floor}")
    return lines


def all_claims(plan: Plan, threshold: float) -> list[Claim]:
    out = []
    present = set(plan.runs)
    if "table2" in present:
        out.append(table2_claim(plan))
    if "table3" in present:
        out.append(table3_claim(plan))
    if "penalty" in present:
        out.append(penalty_claim(plan, threshold))
    if "convergence" in present:
        out.append(convergence_claim(plan))
    if "dispersion" in present:
        out.append(dispersion_claim(plan))
    return out
