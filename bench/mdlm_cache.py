"""Benchmark: the MDLM sampler's logits cache at T >> L (issue 14 item 6).

A model built with ``time_conditioning=False`` (MDLM's default) ignores t, so a row whose block
revealed nothing in the previous step has the same network input as before: the ``mdlm`` ancestral
sampler reuses its logits instead of calling the network (``SamplerConfig.cache``, on by default;
pipeline/sampling/mdlm.py). With T steps over blocks of L_b positions at most L_b steps per block
reveal anything, so at T >> L the cache skips most network calls.

Mask kernel, ancestral sampler, L = 128 in 2 blocks, for each model (random weights, bert vocabulary)
and T: the same seed with the cache off and on, back to back, in one run: wall time, network calls
(``Denoiser.calls``: calls of the network, on all rows or on the rows that changed), forwards per
sample (rows evaluated / batch), the speedup, and whether the two runs drew the same ids (the cache is
exact: it must). Timings are ratios within the run (the machine may be shared).

    .venv/bin/python -m bench.mdlm_cache --threads 1                    # tiny and small, T = 1024, 4096
    .venv/bin/python -m bench.mdlm_cache --models tiny --steps 1024 --batch 4
    .venv/bin/python -m bench.mdlm_cache --quick                        # tiny, L = 32, T = 128
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import torch

from bench.kernels import build, random_neighbor_tables
from bench.sampler import TimedModel, bench_model
from pipeline.core.model import BERT_VOCAB_SIZE
from pipeline.sampling import SamplerConfig, generate


def run(model: TimedModel, kernel, cfg: SamplerConfig, batch: int, seed: int) -> dict:
    model.reset()
    start = time.perf_counter()
    ids, den = generate(model, kernel, cfg, batch, torch.Generator().manual_seed(seed))
    total = time.perf_counter() - start
    return {"ids": ids, "total": total, "forward": model.seconds, "calls": den.calls,
            "per_sample": model.rows / batch}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="tiny,small", help="comma-separated presets (time_conditioning off)")
    p.add_argument("--steps", default="1024,4096", help="comma-separated total steps T")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--strides", type=int, default=2)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="tiny model, L=32, T=128: a smoke test")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.steps, args.seq_len = "tiny", "128", 32
    if args.threads:
        torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    steps = sorted({int(s) for s in args.steps.split(",")})
    kernel = build("mask", random_neighbor_tables(BERT_VOCAB_SIZE, 8), BERT_VOCAB_SIZE)

    print(f"mdlm ancestral, mask kernel, B={args.batch}, L={args.seq_len}, strides={args.strides}, "
          f"V={BERT_VOCAB_SIZE}, time_conditioning=False, threads={torch.get_num_threads()}, CPU")
    print(f"{'model':<7}{'T':>6}{'cache':>7}{'calls':>7}{'fwd/sample':>12}{'wall s':>9}{'forward s':>11}"
          f"{'speedup':>9}  same ids")
    all_same = True
    for name in models:
        model = TimedModel(bench_model(name, args.seq_len, time_conditioning=False))
        warm = SamplerConfig(method="mdlm", steps=2 * args.strides, seq_len=args.seq_len, strides=args.strides)
        run(model, kernel, warm, args.batch, args.seed)
        for T in steps:
            cfg = SamplerConfig(method="mdlm", steps=T, seq_len=args.seq_len, strides=args.strides, cache=False)
            off = run(model, kernel, cfg, args.batch, args.seed)
            on = run(model, kernel, replace(cfg, cache=True), args.batch, args.seed)
            same = torch.equal(off["ids"], on["ids"])
            all_same &= same
            for label, r in (("off", off), ("on", on)):
                speedup = f"{off['total'] / on['total']:>8.1f}x" if label == "on" else f"{'':>9}"
                print(f"{name:<7}{T:>6}{label:>7}{r['calls']:>7}{r['per_sample']:>12.1f}{r['total']:>9.2f}"
                      f"{r['forward']:>11.2f}{speedup}  {'yes' if same else 'NO'}", flush=True)
    print(f"cache_exact={'yes' if all_same else 'no'}")
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())
