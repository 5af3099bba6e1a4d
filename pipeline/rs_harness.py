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
from pipeline.common.cli_fields import add_config_args, config_from_args
from pipeline.common.locks import add_break_lock_argument
from pipeline.research.rs_harness import RsHarnessConfig, run_rs_harness

PROG = "python -m pipeline.rs_harness"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_config_args(p, RsHarnessConfig)
    p.add_argument("--out", required=True, help="output artifact directory")
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    add_break_lock_argument(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with stage_errors(PROG):
        cfg = config_from_args(RsHarnessConfig, args)
        run_rs_harness(cfg, args.out, force=args.force, break_lock=args.break_lock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
