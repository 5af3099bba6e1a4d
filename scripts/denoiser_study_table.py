"""The table of scripts/denoiser_study.sh: one row per run from its evaluation, t-profile and training log.

    python scripts/denoiser_study_table.py OUT
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np


def _val(log: Path) -> str:
    found = re.findall(r"nelbo=([0-9.e+-]+)", log.read_text()) if log.is_file() else []
    return found[-1] if found else "-"


def row(out: Path, name: str) -> str:
    res = json.loads((out / "eval" / name / "results.json").read_text())
    nelbo, sweep = res["nelbo"], (res.get("sweep") or [{}])[0]
    unc = {k: v for k, v in nelbo["candidates"].items() if "uncorrected" in k}
    others = {k: v for k, v in nelbo["candidates"].items() if k != nelbo["bound"] and "uncorrected" not in k}
    prof = json.loads((out / "eval" / name / "t_profile.json").read_text())["profiles"]["as read"]
    at = {p["t"]: p["mean"] for p in prof}
    fmt = lambda x: f"{x:.3g}" if isinstance(x, float) else str(x)  # noqa: E731
    return (f"| {name} | {_val(out / 'logs' / f'{name}.train.log')} | {nelbo['nats_per_token']:.3f} ± "
            f"{nelbo['stderr']:.3f} ({nelbo['bound']}) | "
            + (", ".join(f"{v:.3f}" for v in unc.values()) or "-") + " | "
            + (", ".join(f"{k} {v:.3f}" for k, v in others.items()) or "-") + " | "
            + " / ".join(fmt(at.get(t, float('nan'))) for t in (1e-4, 1e-3, 1e-2, 0.2, 0.99)) + " | "
            + f"{fmt(sweep.get('gen_ppl', '-'))} | {fmt(sweep.get('entropy_mean', '-'))} |")


def main(out: str) -> int:
    out = Path(out)
    counts = np.load(out / "lm1b" / "unigram_counts.npy", allow_pickle=False).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    print(f"training data unigram entropy: {-(p * np.log(p)).sum():.3f} nats/token\n")
    print("| run | val bound | test bound ± s.e. (which) | uncorrected | other bounds | integrand mean at "
          "t = 1e-4 / 1e-3 / 1e-2 / 0.2 / 0.99 | Gen-PPL (AR judge) | entropy |")
    print("|---|---|---|---|---|---|---|---|")
    for d in sorted((out / "eval").iterdir()):
        if (d / "results.json").is_file() and (d / "t_profile.json").is_file():
            print(row(out, d.name))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
