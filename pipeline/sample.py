"""Draw samples from an exported diffusion model.

    python -m pipeline.sample --model EXPORT_DIR --out DIR [--method ctmc|blockwise|tau_leaping|mdlm]
        [--steps 128] [--num-samples 64] [--batch-size 16] [--seq-len 128] [--strides 2] [--seed 0]
        [--top-k K] [--top-p P] [--rho 1] [--freeze-threshold C]
        [--schedule ancestral|fixed|tc|dtc] [--remask none|remdm_cap] [--remask-eta 0.02]
        [--corrector-steps 1] [--corrector-frac 0.1]
        [--lambda-freq F] [--lambda-sem S] [--window 16] [--window-side left|both]
        [--prompt TEXT|FILE | --infill 'the [MASK]*5 sat on the mat'] [--stop-at-eos]
        [--length N] [--entropy-stop NATS] [--entropy-window 256]

writes DIR/samples.jsonl (one record per sample: index, ids, text, seed, config; prompt / infill
and, with --stop-at-eos, length and stopped_at_eos, with --entropy-stop, length and stopped_at_entropy,
when given) and
DIR/manifest.json (stage "sample"). Launched with several processes (torchrun: RANK, WORLD_SIZE)
the samples are split across ranks and rank 0 gathers them. Samplers: docs/sampling.md.
Library: pipeline/sampling/stage.py (SampleConfig, run_sample).
"""
from __future__ import annotations

import argparse
import sys

from pipeline.common.artifacts import stage_errors
from pipeline.common.cpu_host import keep_freed_memory_on_cpu
from pipeline.sampling.cli_args import add_sampler_args, sampler_kwargs
from pipeline.sampling.stage import SampleConfig, run_sample

PROG = "python -m pipeline.sample"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="export directory (python -m pipeline.export)")
    p.add_argument("--out", required=True, help="output directory (samples.jsonl + manifest.json)")
    add_sampler_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with stage_errors(PROG):
        cfg = SampleConfig(**sampler_kwargs(args))
        keep_freed_memory_on_cpu(cfg.device)  # no caching allocator on CPU (pipeline/common/cpu_host.py)
        run_sample(cfg, args.model, args.out, force=args.force, break_lock=args.break_lock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
