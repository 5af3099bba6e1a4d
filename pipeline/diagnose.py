"""Kernel diagnostics before training (paper Sec 3.2, App B.4, B.6.2); docs/diagnostics.md.

    python -m pipeline.diagnose --neighbors NEIGHBOR_DIR --out DIR [--kernels mask,uniform,semdlm,semdlm_plus]
        [--num-t 20] [--eps 1e-5] [--method exact|mc] [--mc-samples 2048] [--mask-id ID] [--seed 0]

writes DIR/diagnostics.csv, DIR/summary.md, DIR/diagnostics.png and prints the summary.
Library: pipeline/research/diagnose.py (DiagnoseConfig, run_diagnose).
"""
from __future__ import annotations

import argparse
import sys

from pipeline.common.artifacts import stage_errors
from pipeline.common.cli_fields import add_config_args, config_from_args
from pipeline.common.locks import add_break_lock_argument
from pipeline.research.diagnose import DiagnoseConfig, run_diagnose

PROG = "python -m pipeline.diagnose"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--neighbors", required=True, help="neighbour artifact directory (python -m neighbor_index)")
    add_config_args(p, DiagnoseConfig)
    p.add_argument("--out", required=True, help="output artifact directory")
    p.add_argument("--force", action="store_true")
    add_break_lock_argument(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with stage_errors(PROG):
        cfg = config_from_args(DiagnoseConfig, args)
        run_diagnose(cfg, args.neighbors, args.out, force=args.force, break_lock=args.break_lock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
