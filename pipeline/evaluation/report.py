"""results.json, report.md, sweep CSV and PNG plots (matplotlib, Agg backend) of an evaluation."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from .learning_curve import curve_line

SWEEP_COLUMNS = ("steps", "lambda_freq", "lambda_sem", "gen_ppl", "entropy_mean", "low_entropy_share",
                 "distinct_1", "distinct_2", "distinct_3", "repetition_rate", "semantic_basin_rate",
                 "num_samples", "seconds")


def _fmt(value, digits=3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e5 else f"{value:.3e}"
    return str(value)


def write_sweep_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=SWEEP_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k) for k in SWEEP_COLUMNS})


def plot_sweep(rows: list[dict], path: Path) -> None:
    """Gen-PPL (log scale) and mean entropy against steps, one line per (lambda_freq, lambda_sem)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_ppl, ax_ent) = plt.subplots(1, 2, figsize=(10, 4))
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["lambda_freq"], row["lambda_sem"]), []).append(row)
    for (lf, ls), group in sorted(groups.items()):
        group = sorted(group, key=lambda r: r["steps"])
        label = f"lambda_freq={lf:g}, lambda_sem={ls:g}"
        steps = [r["steps"] for r in group]
        if any(r.get("gen_ppl") is not None for r in group):
            ax_ppl.plot(steps, [r.get("gen_ppl") or math.nan for r in group], marker="o", label=label)
        ax_ent.plot(steps, [r["entropy_mean"] for r in group], marker="o", label=label)
    for ax, title in ((ax_ppl, "Gen-PPL"), (ax_ent, "unigram entropy (nats)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sampling steps")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax_ppl.set_yscale("log")
    ax_ent.axhline(4.8, color="grey", linestyle="--", linewidth=1, label="threshold 4.8")
    ax_ent.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_entropy_histogram(entropies: list[float], path: Path, threshold: float = 4.8) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(entropies, bins=min(30, max(5, len(entropies) // 2)))
    ax.axvline(threshold, color="red", linestyle="--", label=f"threshold {threshold}")
    ax.set_xlabel("per-sample unigram entropy (nats)")
    ax.set_ylabel("samples")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def unigram_line(scored: dict) -> str:
    """One sentence: the bound against the unigram reference of the same tokens (baselines.py)."""
    u = scored["unigram"]
    sigmas = (f", {abs(u['margin_stderrs']):.1f} paired standard errors over sequences"
              if u.get("margin_stderrs") is not None else "")
    return (f"Unigram reference ({u['smoothing']}-smoothed counts of the training split): the same tokens cost "
            f"{_fmt(u['nats_per_token'])} nats/token, the training data's unigram entropy is "
            f"{_fmt(u['train_entropy'])}; the bound is {_fmt(abs(u['margin_nats']))} nats/token "
            f"{'below' if u['margin_nats'] > 0 else 'above'} the former{sigmas}, and "
            f"{'below' if u['below_train_entropy'] else 'above'} the latter." + floor_sentence(u))


def floor_sentence(u: dict) -> str:
    """The frequency floor (frequency_floor.py), when it was measured: the bound's slack and the model's margin."""
    f = u.get("frequency_floor")
    if not f:
        return ""
    margin, z = f["margin_nats"], f.get("margin_stderrs")
    sigmas = f" ({abs(z):.1f} paired standard errors)" if z is not None else ""
    if z is not None and z > 2:
        verdict = "it has learned more than token frequencies"
        if u["margin_nats"] < 0:
            verdict += ", which its bound alone, above the unigram cross-entropy, does not show"
    else:
        verdict = "not resolved from a frequency-only model"
    return (f" A denoiser that knows only these frequencies reads {_fmt(f['nats_per_token'])} under this kernel's "
            f"bound ({f['bound']}; the bound's slack at zero context: {f['slack']:+.3f} nats/token); this model "
            f"is {_fmt(abs(margin))} {'below' if margin > 0 else 'above'} that floor{sigmas}: {verdict}.")


def baseline_lines(nelbo: dict, base: dict) -> list[str]:
    """The --baseline section: both bounds on the same test sequences and their paired difference."""
    kind = base["kernel"] or base["kind"]
    se = f" ± {_fmt(base['difference_stderr'])}" if base.get("difference_stderr") else ""
    sigmas = f" ({base['difference_stderrs']:+.1f} standard errors)" if base.get("difference_stderrs") else ""
    return ["", "## Against the baseline (same test sequences)", "",
            "| model | bound | tokens | nats/token | ± stderr | PPL (upper bound) |", "|---|---|---|---|---|---|",
            f"| this model | {nelbo['bound']} | {nelbo['tokens']} | {_fmt(nelbo['nats_per_token'])} | "
            f"{_fmt(nelbo.get('stderr'))} | {_fmt(nelbo['perplexity'], 2)} |",
            f"| `{base['model']}` ({kind}) | {base['bound']} | {base['tokens']} | {_fmt(base['nats_per_token'])} "
            f"| {_fmt(base.get('stderr'))} | {_fmt(base['perplexity'], 2)} |", "",
            f"Difference (this model - baseline): {_fmt(base['difference'])}{se} nats/token{sigmas}, paired over "
            "the sequences (docs/sampling.md, Standard errors). An AR bound is its exact NLL and never scores a "
            "sequence's first token; a diffusion bound is an upper bound on its NLL."]


def write_report(out: Path, results: dict) -> None:
    """results.json + report.md (+ the plots named in results['plots'], written by the caller)."""
    (out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")
    lines = ["# Evaluation report", "", f"- model: `{results.get('model')}`",
             f"- kernel: `{results.get('kernel')}`, kind: `{results.get('kind')}`"]
    if results.get("judge"):
        lines.append(f"- Gen-PPL judge: `{results['judge']}` (protocol: docs/sampling.md)")
    nelbo = results.get("nelbo")
    if nelbo:
        lines += ["", "## Test likelihood", "",
                  "| bound | sequences | tokens | nats/token | ± stderr | ± over sequences | bits/token "
                  "| PPL (upper bound) |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| {nelbo['bound']} | {nelbo['sequences']} | {nelbo['tokens']} | {_fmt(nelbo['nats_per_token'])} "
                  f"| {_fmt(nelbo.get('stderr'))} | {_fmt(nelbo.get('stderr_sequences'))} "
                  f"| {_fmt(nelbo['bits_per_token'])} | {_fmt(nelbo['perplexity'], 2)} |",
                  "", "stderr: Monte Carlo over the t draws on these sequences; over sequences: as an estimate for "
                  "the data distribution (docs/sampling.md, Standard errors)."]
        others = {k: v for k, v in (nelbo.get("candidates") or {}).items() if k != nelbo["bound"]}
        if others:
            lines += ["", "The tightest valid bound is reported; the others on the same draws (nats/token): "
                      + ", ".join(f"{k} {_fmt(v)}" for k, v in others.items()) + "."]
            if any("uncorrected" in k for k in others):
                lines += ["", "`*_uncorrected`: the same logits read without the change-aware correction "
                          "(docs/likelihood.md Sec 7), a bound of that other model, not a candidate."]
        if nelbo.get("unigram"):
            lines += ["", unigram_line(nelbo)]
        if nelbo.get("stderr_warning"):
            lines += ["", f"**Warning:** {nelbo['stderr_warning']}"]
    if results.get("baseline"):
        lines += baseline_lines(results["nelbo"], results["baseline"])
    if results.get("training_curve"):
        unigram = ((nelbo or {}).get("unigram") or {}).get("train_entropy")
        lines += ["", "## Training", "", curve_line(results["training_curve"], unigram)]
    sets = results.get("eval_sets") or {}
    if sets:
        lines += ["", "## Zero-shot likelihood", "",
                  "| set | detokenizer | sequences | tokens | bound | nats/token | ± stderr | PPL (upper bound) |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, s in sets.items():
            lines.append(f"| {name} | {s['detokenizer']} | {s['sequences']} | {s['tokens']} | {s['bound']} "
                         f"| {_fmt(s['nats_per_token'])} | {_fmt(s.get('stderr'))} | {_fmt(s['perplexity'], 2)} |")
        lines += ["", "Sources: " + "; ".join(f"{name} = `{s['source']}`" for name, s in sets.items())
                  + ". PPL = exp(nats/token) of the tightest bound (the exact NLL for an AR export); stderr over "
                  "the t draws (docs/sampling.md, Evaluation)."]
    rows = results.get("sweep", [])
    if rows:
        lines += ["", "## Samples", "",
                  "| steps | λ_freq | λ_sem | Gen-PPL | entropy | <4.8 | distinct-1/2/3 | repetition | basin |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(
                f"| {r['steps']} | {r['lambda_freq']:g} | {r['lambda_sem']:g} | {_fmt(r.get('gen_ppl'), 2)} "
                f"| {_fmt(r['entropy_mean'])} | {_fmt(r['low_entropy_share'], 2)} "
                f"| {_fmt(r['distinct_1'], 2)}/{_fmt(r['distinct_2'], 2)}/{_fmt(r['distinct_3'], 2)} "
                f"| {_fmt(r['repetition_rate'])} | {_fmt(r.get('semantic_basin_rate'))} |")
        longest = results.get("max_sample_len")
        if longest and math.log(longest) < 4.8:
            lines += ["", f"Note: samples of {longest} tokens have at most log({longest}) = "
                      f"{math.log(longest):.2f} nats of unigram entropy, so the 4.8 threshold (meant for long "
                      "samples) flags every one."]
        lines += ["", "Entropy: per-sample unigram entropy in nats, mean over samples; `<4.8`: share of samples "
                  "below the paper's 4.8 threshold (collapsed / semantic-basin regime). Distinct-n: mean per "
                  "sample. Repetition: share of tokens repeating one of the W (--window) tokens before. "
                  "Basin: share of nearby pairs of different tokens that are table neighbours."]
    examples = results.get("examples") or []
    if examples:
        lines += ["", "## Example samples", ""]
        lines += [f"{i + 1}. {text[:300]!r}" for i, text in enumerate(examples)]
    plots = results.get("plots") or []
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    (out / "report.md").write_text("\n".join(lines) + "\n")
