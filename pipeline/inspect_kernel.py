"""Inspect a transition kernel: analytic q_t(. | WORD) against empirical frequencies of sample_xt.

    python -m pipeline.inspect_kernel --kernel semdlm_plus --neighbors artifacts/neighbors \\
        --token king --t 0.5 --samples 20000

Library: pipeline/research/inspect_kernel.py (InspectConfig, inspect).
"""
from __future__ import annotations

import argparse
import sys

from pipeline.common.artifacts import stage_errors
from pipeline.core.kernels import PRESETS
from pipeline.research.inspect_kernel import InspectConfig, inspect

PROG = "python -m pipeline.inspect_kernel"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--kernel", required=True, choices=sorted(PRESETS), help="kernel preset")
    p.add_argument("--neighbors", help="neighbour-table artifact directory (needed by the semdlm kernels)")
    p.add_argument("--token", required=True, help="the clean token x0 (a word, or an id with --vocab-size)")
    p.add_argument("--t", type=float, required=True, help="diffusion time in [0, 1]")
    p.add_argument("--samples", type=int, default=10_000, help="number of draws of x_t (default 10000)")
    p.add_argument("--top", type=int, default=10, help="entries to print (default 10)")
    p.add_argument("--k-max", type=int, default=None,
                   help="override the preset's k_max (default: the preset's, fitted to the stored table)")
    p.add_argument("--tokenizer", default=None, help="tokenizer path (default: offline bert-base-uncased)")
    p.add_argument("--vocab-size", type=int, default=None, help="synthetic vocabulary: ids, no tokenizer")
    p.add_argument("--mask-id", type=int, default=None, help="[MASK] id with --vocab-size (default V - 1)")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with stage_errors(PROG):
        cfg = InspectConfig(kernel=args.kernel, token=args.token, t=args.t, samples=args.samples, top=args.top,
                            k_max=args.k_max, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                            mask_id=args.mask_id, seed=args.seed)
        lines = inspect(cfg, args.neighbors)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
