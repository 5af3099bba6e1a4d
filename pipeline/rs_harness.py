"""Exact-KL harness for unmasking schedules on Reed–Solomon codes; docs/unmasking_schedules.md.

    python -m pipeline.rs_harness --out DIR [--q 7 --n 6 --k 3] [--iterations 1,2,3]
        [--schedules fixed,tc,dtc] [--exact-limit 200000] [--mc-samples N] [--seed 0]

writes DIR/kl.csv, DIR/summary.md, DIR/kl_vs_K.png and prints the table.
Library: pipeline/research/rs_harness.py (RsHarnessConfig, run_rs_harness).
"""
from __future__ import annotations

import argparse
import sys

from pipeline.common.artifacts import stage_errors
from pipeline.common.locks import add_break_lock_argument
from pipeline.research.rs_harness import DEFAULT_EXACT_LIMIT, RsHarnessConfig, run_rs_harness
from pipeline.sampling.unmasking import SCHEDULES

PROG = "python -m pipeline.rs_harness"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--q", type=int, default=7, help="prime field size (default 7)")
    p.add_argument("--n", type=int, default=6, help="code length, <= q (default 6)")
    p.add_argument("--k", type=int, default=3, help="code dimension (default 3)")
    p.add_argument("--iterations", default=None, help="comma-separated K values (default 1..n)")
    p.add_argument("--schedules", default=",".join(SCHEDULES), help="comma-separated subset of " + ",".join(SCHEDULES))
    p.add_argument("--exact-limit", type=int, default=DEFAULT_EXACT_LIMIT,
                   help="largest q^n for the exact dynamic programme (default %(default)s)")
    p.add_argument("--mc-samples", type=int, default=None,
                   help="Monte Carlo runs per (schedule, K); default 20000 beyond the exact limit, 0 within")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output artifact directory")
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    add_break_lock_argument(p)
    return p


def _comma_list(text: str | None, kind=str) -> tuple | None:
    values = tuple(kind(v.strip()) for v in (text or "").split(",") if v.strip())
    return values or None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with stage_errors(PROG):
        cfg = RsHarnessConfig(q=args.q, n=args.n, k=args.k, iterations=_comma_list(args.iterations, int),
                              schedules=_comma_list(args.schedules) or (), exact_limit=args.exact_limit,
                              mc_samples=args.mc_samples, seed=args.seed)
        run_rs_harness(cfg, args.out, force=args.force, break_lock=args.break_lock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
