"""Where does a model's bound come from in t? The per-token integrand of its continuous-time bound on a t grid.

    python -m pipeline.t_profile --model EXPORT [--split DIR] [--sequences 64]
        [--t 1e-4,1e-3,1e-2,0.2,0.99] [--reading recorded|direct|kernel] [--bound auto|ctelbo|resampled]
        [--seed 0] [--out FILE.json]

Printed per t: the mean, median and max over tokens, in nats per token per unit time; last line
``t=<t>:<mean> ...``. Library and what the columns mean: pipeline/research/t_profile.py; docs/likelihood.md 7.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.common.artifacts import StageError, stage_errors
from pipeline.research.t_profile import BOUNDS, DEFAULT_TIMES, integrand_profile, profile_bound, reading_as


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.t_profile", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a diffusion export (python -m pipeline.export)")
    ap.add_argument("--split", default=None, help="MDS split to read (default: the export's preprocessed test split)")
    ap.add_argument("--sequences", type=int, default=64)
    ap.add_argument("--t", default=",".join(map(str, DEFAULT_TIMES)), help="comma-separated times in (0, 1]")
    ap.add_argument("--reading", default="recorded", choices=("recorded", "direct", "kernel"),
                    help="how the output is read (default: as the export records; the others to compare)")
    ap.add_argument("--bound", default="auto", choices=BOUNDS,
                    help="whose integrand: the conditional-path ELBO (ctelbo) or the resampling chain's bound "
                         "(resampled; kernel-aware SemDLM+); auto (default): resampled where it applies")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the profile as JSON here")
    args = ap.parse_args(argv)
    with stage_errors(ap.prog):
        try:
            times = [float(x) for x in args.t.split(",") if x]
        except ValueError:
            raise StageError(f"--t must be comma-separated numbers, got {args.t!r}") from None
        if not times or not all(0.0 < t <= 1.0 for t in times) or args.sequences < 1:
            raise StageError("--t needs times in (0, 1] and --sequences >= 1")
        from pipeline.common.export_artifact import load_export
        from pipeline.common.export_contents import default_test_split
        from pipeline.common.mds_check import read_split_sequences

        exported = load_export(args.model)
        if exported.kind != "diffusion":
            raise StageError(f"{args.model} is an autoregressive export: it has no diffusion bound")
        split = args.split or default_test_split(exported.config)  # an error when that split is gone
        if split is None:
            raise StageError("the export names no preprocessed data: pass --split")
        seqs = read_split_sequences(split, args.sequences)
        pad_id = exported.tokenizer_info.get("special_ids", {}).get("pad")
        reading = reading_as(exported, args.reading)
        try:
            bound = profile_bound(exported.kernel, reading, args.bound)
        except ValueError as e:
            raise StageError(str(e)) from None
        columns = {"as read": reading}
        if reading.log_ratio:
            columns["uncorrected"] = reading.uncorrected()
        profiles = {name: integrand_profile(exported.model, exported.kernel, seqs, pad_id, times, r,
                                            args.batch_size, args.seed, bound) for name, r in columns.items()}
    print(f"{exported.kernel.cfg.name}, reading {reading}, bound {bound}; {seqs.shape[0]} sequences; nats per token "
          "per unit time")
    print("| t | " + " | ".join(f"{c} mean | median | max" for c in columns) + " |")
    print("|---|" + "---|---|---|" * len(columns))
    for i, t in enumerate(times):
        cells = [f"{p[i]['mean']:.4g} | {p[i]['median']:.4g} | {p[i]['max']:.4g}" for p in profiles.values()]
        print(f"| {t:g} | " + " | ".join(cells) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps({"model": str(Path(args.model).resolve()), "reading": str(reading),
                                              "bound": bound, "profiles": profiles}, indent=2) + "\n")
    print(" ".join(f"t={p['t']:g}:{p['mean']:.4g}" for p in profiles["as read"]))
    return 0



if __name__ == "__main__":
    sys.exit(main())
