"""Inspect a transition kernel: analytic q_t(. | WORD) against empirical frequencies of sample_xt.

    python -m pipeline.inspect_kernel --kernel semdlm_plus --neighbors artifacts/neighbors \\
        --token king --t 0.5 --samples 20000

Library: pipeline/research/inspect_kernel.py (InspectConfig, inspect).
"""
from __future__ import annotations

import argparse
import sys

from pipeline.common.artifacts import stage_errors
from pipeline.common.cli_fields import add_config_args, config_from_args
from pipeline.research.inspect_kernel import InspectConfig, inspect

PROG = "python -m pipeline.inspect_kernel"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--neighbors", help="neighbour-table artifact directory (needed by the semdlm kernels)")
    add_config_args(p, InspectConfig)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with stage_errors(PROG):
        cfg = config_from_args(InspectConfig, args)
        lines = inspect(cfg, args.neighbors)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
