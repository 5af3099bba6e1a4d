"""Benchmark: cost of corrupting a batch (``Kernel.sample_xt``) relative to one training step.

Target (issue 4): corrupting a B = 8, L = 128 batch costs <= 2 % of one training step of the
``small`` model (forward + backward + AdamW step) on CPU. Both are timed in this one run, on this
machine, under the same load, and the ratio is printed per kernel.

No artifacts needed: the neighbour table is random, of the bert vocabulary size (30,522) with
k_max = 64, laid out like the neighbor_index artifact (distinct valid neighbours, self excluded,
specials and [unusedN] invalid, a Zipf unigram prior on the valid vocabulary).

    .venv/bin/python -m bench.kernels                       # all kernels, defaults above
    .venv/bin/python -m bench.kernels --kernels mask semdlm_plus --steps 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from pipeline.core.model import DiffusionTransformer, ModelConfig, count_parameters

KERNELS = ("mask", "uniform", "semdlm", "semdlm_softmax", "semdlm_plus")
BERT_MASK_ID = 103
BERT_SPECIAL_IDS = (0, 100, 101, 102, 103)       # [PAD] [UNK] [CLS] [SEP] [MASK]
BERT_UNUSED = range(1, 999)                      # [unused0] .. [unused993] and friends


def random_neighbor_tables(vocab_size: int, k_max: int, seed: int = 0):
    """(neighbors Long[V, k_max], similarities Float[V, k_max], valid Bool[V], unigram Float64[V]).

    Distinct neighbours without a [V, V] matrix: positive gaps accumulate to distinct offsets
    (< number of valid tokens) around the row's own position in the valid list, so the row token is
    never its own neighbour; a random column permutation removes the ordering by offset.
    """
    g = torch.Generator().manual_seed(seed)
    valid = torch.ones(vocab_size, dtype=torch.bool)
    valid[list(BERT_SPECIAL_IDS)] = False
    valid[list(BERT_UNUSED)] = False
    valid_ids = valid.nonzero().squeeze(1)
    n_valid = valid_ids.numel()
    max_gap = n_valid // k_max
    gaps = torch.randint(1, max_gap, (vocab_size, k_max), generator=g)
    offsets = gaps.cumsum(1)                                          # distinct, in [1, n_valid)
    offsets = offsets.gather(1, torch.rand(vocab_size, k_max, generator=g).argsort(1))
    position = torch.full((vocab_size,), -1, dtype=torch.long)
    position[valid_ids] = torch.arange(n_valid)
    base = torch.where(position >= 0, position, torch.randint(0, n_valid, (vocab_size,), generator=g))
    neighbors = valid_ids[(base[:, None] + offsets) % n_valid]
    similarities = torch.rand(vocab_size, k_max, generator=g).sort(1, descending=True).values
    zipf = 1.0 / torch.arange(1, n_valid + 1, dtype=torch.float64)
    unigram = torch.zeros(vocab_size, dtype=torch.float64)
    unigram[valid_ids[torch.randperm(n_valid, generator=g)]] = zipf / zipf.sum()
    return neighbors, similarities, valid, unigram


def time_training_step(cfg: ModelConfig, batch: int, seq_len: int, steps: int, warmup: int) -> list[float]:
    model = DiffusionTransformer(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    x = torch.randint(0, cfg.vocab_size, (batch, seq_len))
    t = torch.rand(batch)
    print(f"small model: {count_parameters(model)['total']:,} parameters; "
          f"timing {warmup} warm-up + {steps} steps ...", flush=True)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = model(x, t)
        torch.nn.functional.cross_entropy(logits.view(-1, cfg.vocab_size), x.view(-1)).backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def time_corruption(kernel, batch: int, seq_len: int, vocab_size: int, reps: int) -> list[float]:
    g = torch.Generator().manual_seed(1)
    x0 = torch.randint(999, vocab_size, (batch, seq_len), generator=g)
    times = []
    for i in range(reps + 3):                            # 3 warm-up calls
        t = torch.rand(batch, generator=g)
        start = time.perf_counter()
        kernel.sample_xt(x0, t, generator=g)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return times


def build(name: str, tables, vocab_size: int, device: torch.device | str | None = None):
    from pipeline.core.kernels import KernelConfig, build_kernel
    neighbors, similarities, valid, unigram = tables
    return build_kernel(KernelConfig.preset(name), vocab_size, BERT_MASK_ID, neighbors, valid, unigram,
                        similarities=similarities, device=device)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=KERNELS)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="timed training steps (after warm-up)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--reps", type=int, default=30, help="timed corruption calls per kernel")
    ap.add_argument("--k-max", type=int, default=64)
    ap.add_argument("--target", type=float, default=0.02, help="maximum allowed ratio")
    args = ap.parse_args(argv)
    if min(args.batch, args.seq_len, args.steps, args.reps, args.k_max) < 1 or args.warmup < 0:
        ap.error("batch, seq-len, steps, reps and k-max must be positive")

    torch.manual_seed(0)
    cfg = ModelConfig.preset("small")
    tables = random_neighbor_tables(cfg.vocab_size, args.k_max)
    step = statistics.median(time_training_step(cfg, args.batch, args.seq_len, args.steps, args.warmup))
    print(f"training step (B={args.batch}, L={args.seq_len}, fwd+bwd+AdamW, {torch.get_num_threads()} threads): "
          f"median {step * 1e3:.1f} ms")
    print(f"{'kernel':<16}{'corrupt ms':>12}{'ratio':>10}  verdict")
    failed = []
    for name in args.kernels:
        kernel = build(name, tables, cfg.vocab_size)
        cost = statistics.median(time_corruption(kernel, args.batch, args.seq_len, cfg.vocab_size, args.reps))
        ratio = cost / step
        ok = ratio <= args.target
        failed += [] if ok else [name]
        print(f"{name:<16}{cost * 1e3:>12.3f}{ratio * 100:>9.3f}%  {'ok' if ok else 'OVER TARGET'}")
    print(f"target <= {args.target * 100:.1f}% of a training step: "
          f"{'all kernels pass' if not failed else 'over target: ' + ', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
