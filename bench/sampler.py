"""Benchmark: semantic-frequency penalty (Eq 23) + kernel projection (Eq 121) vs one model forward.

Target (issue 6): penalty plus projection cost <= 10 % of one forward of the ``small`` model
(B = 8, L = 128) on CPU. Both are timed in this one run, under the same load; the ratio is printed.

Measured per sampler step, on a random neighbour table of the bert vocabulary (30,522 x 64, built
like the neighbor_index artifact by bench.kernels.random_neighbor_tables):

* penalty: n_i (window 2W positions) and m_i = S+ n_i (S+ as neighbor_index stores it: the diagonal
  plus max(cos, 0) over 16 neighbours per token; ``--assoc-k``) applied to the logits;
* projection: x~_s ~ q_s(. | x~0) with the semdlm_plus kernel (Kernel.sample_xt) at s = 0.5;
* for information: the float64 softmax + inverse-CDF categorical draw of the proposal.

    .venv/bin/python -m bench.sampler                     # B=8, L=128, W=16
    .venv/bin/python -m bench.sampler --batch 8 --seq-len 128 --window 16 --repeats 5
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from bench.kernels import BERT_MASK_ID, random_neighbor_tables
from pipeline.common.neighbor_artifact import semantic_association_rows
from pipeline.core.kernels import KernelConfig, build_kernel
from pipeline.core.model import BERT_VOCAB_SIZE, DiffusionTransformer, ModelConfig
from pipeline.sampling.draws import categorical
from pipeline.sampling.penalty import PenaltyConfig, apply_semantic_frequency_penalty, association_by_columns


def median_seconds(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--k-max", type=int, default=64)
    p.add_argument("--assoc-k", type=int, default=16, help="S+ neighbours per token (neighbor_index default)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    V, B, L = BERT_VOCAB_SIZE, args.batch, args.seq_len
    neighbors, sims, valid, unigram = random_neighbor_tables(V, args.k_max)
    kernel = build_kernel(KernelConfig.preset("semdlm_plus", k_max=args.k_max), V, mask_id=BERT_MASK_ID,
                          neighbors=neighbors, valid_vocab=valid, unigram_prior=unigram)
    association = association_by_columns(*semantic_association_rows(neighbors.numpy(), sims.numpy(), args.assoc_k))
    penalty = PenaltyConfig(lambda_freq=1.0, lambda_sem=1.0, window=args.window)

    model = DiffusionTransformer(ModelConfig.preset("small")).eval()
    x = kernel.sample_prior((B, L))
    t = torch.full((B,), 0.5)
    with torch.no_grad():
        logits = model(x, t)
    proposal = torch.randint(0, V, (B, L))
    gen = torch.Generator().manual_seed(0)

    with torch.no_grad():
        forward_s = median_seconds(lambda: model(x, t), args.repeats)
    penalty_s = median_seconds(lambda: apply_semantic_frequency_penalty(logits, x, penalty, association, inplace=True),
                               args.repeats)  # in place, as the sampler applies it to fresh logits
    project_s = median_seconds(lambda: kernel.sample_xt(proposal, t, generator=gen), args.repeats)
    draw_s = median_seconds(lambda: categorical(torch.softmax(logits.double(), -1), gen), args.repeats)

    ratio = (penalty_s + project_s) / forward_s
    print(f"small forward B={B} L={L}: {forward_s * 1e3:.1f} ms (threads={torch.get_num_threads()})")
    print(f"penalty (W={args.window}, S+ = diagonal + {args.assoc_k} neighbours): {penalty_s * 1e3:.2f} ms")
    print(f"projection semdlm_plus sample_xt: {project_s * 1e3:.2f} ms")
    print(f"[info] float64 softmax + categorical draw: {draw_s * 1e3:.2f} ms ({draw_s / forward_s:.1%} of forward)")
    print(f"(penalty + projection) / forward = {ratio:.2%}  (target <= 10%: {'PASS' if ratio <= 0.10 else 'FAIL'})")
    return 0 if ratio <= 0.10 else 1


if __name__ == "__main__":
    sys.exit(main())
