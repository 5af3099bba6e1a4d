"""Exact parameter counts and training FLOPs per token of each model variant (untied / tied, adaLN or not).

    python -m pipeline.model_size [--preset small] [--vocab-size V] [--seq-len L]

Counts come from the real modules built on the meta device (no memory); FLOPs/token is
pipeline.core.model.flops_per_token (6 N + 12 n_layer d L). Library: pipeline/core/model.py.
"""
from __future__ import annotations

import argparse
import sys

import torch

from pipeline.core.model import PRESETS, ModelConfig, build_model, count_parameters, flops_per_token

VARIANTS = {"untied (MDLM)": {}, "tied": {"tie_embeddings": True}, "no adaLN": {"adaln": False},
            "tied, no adaLN": {"tie_embeddings": True, "adaln": False}}


def main(argv: list[str] | None = None) -> int:
    """The table: exact counts per variant (module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.model_size", description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small", choices=sorted(PRESETS))
    ap.add_argument("--vocab-size", type=int, default=None)
    ap.add_argument("--seq-len", type=int, default=128, help="sequence length for the FLOPs/token column")
    args = ap.parse_args(argv)
    extra = {} if args.vocab_size is None else {"vocab_size": args.vocab_size}
    print(f"{'variant':<16}{'total':>14}{'non-embedding':>16}{'FLOPs/token':>14}")
    for name, overrides in VARIANTS.items():
        cfg = ModelConfig.preset(args.preset, **extra, **overrides)
        with torch.device("meta"):   # no memory: counts come from the real modules
            counts = count_parameters(build_model(cfg))
        print(f"{name:<16}{counts['total']:>14,}{counts['non_embedding']:>16,}"
              f"{flops_per_token(cfg, args.seq_len):>14.4g}")
    return 0



if __name__ == "__main__":
    sys.exit(main())
