"""Benchmark: cost of one likelihood-bound evaluation per test token vs one model forward.

Target (issue 13): one ``pipeline.core.likelihood.bound_estimates`` call (default continuous bound,
one t draw per sequence) costs <= 1.5x one forward of the same model on the same batch, for every
kernel, so that test NELBO and training-time validation of a semantic kernel cost about what the
mask kernel's do. Both are timed in this one run (median of ``--reps`` after a warm-up), on CPU,
for the ``tiny`` model dims (configs/tiny.yaml) and the ``small`` preset, with the bert vocabulary
(V = 30,522), L = 128 and a random k_max = 64 neighbour table laid out like the neighbor_index
artifact (bench/kernels.py). Random weights: the cost does not depend on them. For contrast, the
T-step bound (``bound="tstep"``, mc_steps = 4 of num_steps = 1000) of ``semdlm_plus``, timed once.
The ratio is the median over reps of (bound / forward) timed back to back, so drift cancels.
``--reading default`` reads the output as a model trained with the defaults is read (kernel-aware, and
change-aware: each bound also computed uncorrected; pipeline/core/posterior.py); ``plain`` (default here,
the figures of earlier sessions) reads the logits as the posterior.

    .venv/bin/python -m bench.likelihood                    # defaults above, 2 threads
    .venv/bin/python -m bench.likelihood --models tiny --kernels mask semdlm_plus --no-tstep
    .venv/bin/python -m bench.likelihood --reading default  # what evaluate costs for a default-trained model
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from bench.kernels import BERT_MASK_ID, build, random_neighbor_tables
from pipeline.common.cpu_host import keep_freed_memory_on_cpu
from pipeline.core.ct_elbo import ctelbo_per_token
from pipeline.core.kernels import alpha_and_derivative
from pipeline.core.likelihood import bound_estimates, udlm_integrand
from pipeline.core.model import DiffusionTransformer, ModelConfig
from pipeline.core.posterior import PLAIN

KERNELS = ("mask", "uniform", "semdlm_plus")


def _synced(fn, device: torch.device):
    """``fn`` followed by a device synchronisation (CUDA runs asynchronously)."""
    if device.type != "cuda":
        return fn
    return lambda: (fn(), torch.cuda.synchronize(device))[0]


def _median_time(fn, reps: int, warmup: int = 1) -> float:
    times = []
    for i in range(warmup + reps):
        start = time.perf_counter()
        fn()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _paired(forward, bound, reps: int) -> tuple[float, float]:
    """(median bound time, median of per-rep bound / forward ratios): each rep times a forward and a
    bound back to back, so drift of a shared machine cancels in the ratio."""
    forward(), bound()
    costs, ratios = [], []
    for _ in range(reps):
        start = time.perf_counter()
        forward()
        mid = time.perf_counter()
        bound()
        end = time.perf_counter()
        costs.append(end - mid)
        ratios.append((end - mid) / (mid - start))
    return statistics.median(costs), statistics.median(ratios)


def _each_uniform_bound(kernel, model, x0, xt, t, g, reps, preset, forward, tokens) -> list[dict]:
    a, da = alpha_and_derivative(kernel.cfg, t)
    xt_u, _ = kernel.sample_xt(x0, t, generator=g)
    alone = {"ctelbo only": lambda: ctelbo_per_token(kernel, model(xt_u, t), x0, xt_u, t).sum(-1),
             "udlm only": lambda: udlm_integrand(model(xt_u, t), x0, xt_u, a, da).sum(-1)}
    rows = []
    for label, fn in alone.items():
        cost, ratio = _paired(lambda: model(xt, t), fn, reps)
        rows.append({"model": preset, "kernel": kernel.cfg.name, "bound": label, "forward_ms": forward * 1e3,
                     "bound_ms": cost * 1e3, "us_per_token": cost / tokens * 1e6, "ratio": ratio})
        print(f"  {kernel.cfg.name:<12} {label:<11}{cost * 1e3:9.1f} ms  x{ratio:.2f} forward", flush=True)
    return rows


def default_reading(kernel_name: str):
    """How a model of ``kernel_name`` trained with TrainConfig's defaults is read (the trainer's own rule)."""
    from pipeline.training.config import TrainConfig

    return TrainConfig(kernel=kernel_name).reading()


@torch.no_grad()
def bench_model(preset: str, batch: int, seq_len: int, kernels, tables, reps: int, tstep: bool,
                device: torch.device | str = "cpu", reading: str = "plain") -> list[dict]:
    device = torch.device(device)
    torch.manual_seed(0)
    cfg = ModelConfig.preset(preset, vocab_size=30522, max_seq_len=max(seq_len, 256))
    model = DiffusionTransformer(cfg).eval().to(device)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randint(999, cfg.vocab_size, (batch, seq_len), generator=g)
    t = torch.rand(batch, generator=g).clamp(1e-3, 1 - 1e-3)
    xt = x0.clone()
    xt[torch.rand(batch, seq_len, generator=g) < 0.5] = BERT_MASK_ID
    if device.type != "cpu":  # the draws above stay on the CPU generator (same data on every device)
        x0, t, xt = x0.to(device), t.to(device), xt.to(device)
        g = torch.Generator(device=device).manual_seed(1)
    tokens = batch * seq_len
    forward = _median_time(_synced(lambda: model(xt, t), device), reps)
    print(f"{preset}: B={batch} L={seq_len} V={cfg.vocab_size}, one forward median {forward * 1e3:.1f} ms "
          f"({forward / tokens * 1e6:.1f} us/token)", flush=True)
    rows = []
    for name in kernels:
        kernel = build(name, tables, cfg.vocab_size, device)
        read = default_reading(name) if reading == "default" else PLAIN
        estimate = _synced(lambda k=kernel, r=read: bound_estimates(k, model, x0, t=t, generator=g, reading=r), device)
        cost, ratio = _paired(_synced(lambda: model(xt, t), device), estimate, reps)
        rows.append({"model": preset, "kernel": name, "bound": "continuous", "reading": str(read),
                     "forward_ms": forward * 1e3, "bound_ms": cost * 1e3, "us_per_token": cost / tokens * 1e6,
                     "ratio": ratio})
        print(f"  {name:<12} continuous {cost * 1e3:9.1f} ms  {cost / tokens * 1e6:8.1f} us/token  "
              f"x{ratio:.2f} forward", flush=True)
        if "udlm_continuous" in kernel.cfg.continuous_bounds:  # uniform: what each of its two bounds costs alone
            rows += _each_uniform_bound(kernel, model, x0, xt, t, g, reps, preset, forward, tokens)
    if tstep:
        kernel = build("semdlm_plus", tables, cfg.vocab_size, device)
        start = time.perf_counter()
        bound_estimates(kernel, model, x0, bound="tstep", num_steps=1000, mc_steps=4, generator=g)
        cost = time.perf_counter() - start
        rows.append({"model": preset, "kernel": "semdlm_plus", "bound": "tstep T=1000 mc=4",
                     "forward_ms": forward * 1e3, "bound_ms": cost * 1e3, "us_per_token": cost / tokens * 1e6,
                     "ratio": cost / forward})
        print(f"  semdlm_plus  tstep(T=1000, 4 steps) {cost * 1e3:9.1f} ms  x{cost / forward:.1f} forward (1 run)",
              flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "small"], choices=("tiny", "small"))
    ap.add_argument("--kernels", nargs="+", default=list(KERNELS))
    ap.add_argument("--batch-tiny", type=int, default=8)
    ap.add_argument("--batch-small", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--k-max", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-tstep", action="store_true", help="skip the (slow) T-step contrast")
    ap.add_argument("--reading", choices=("plain", "default"), default="plain",
                    help="plain: logits as the posterior; default: as a default-trained model is read")
    ap.add_argument("--target", type=float, default=1.5, help="maximum bound / forward ratio")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory_on_cpu("cpu")  # as python -m pipeline.evaluate does on CPU (pipeline/common/cpu_host.py)
    tables = random_neighbor_tables(30522, args.k_max)
    rows = []
    for preset in args.models:
        batch = args.batch_tiny if preset == "tiny" else args.batch_small
        rows += bench_model(preset, batch, args.seq_len, args.kernels, tables, args.reps, not args.no_tstep,
                            reading=args.reading)
    print("\n| model | kernel | bound | forward ms | bound ms | us/token | bound / forward |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['kernel']} | {r['bound']} | {r['forward_ms']:.1f} | {r['bound_ms']:.1f} "
              f"| {r['us_per_token']:.1f} | {r['ratio']:.2f}x |")
    over = [f"{r['model']}/{r['kernel']}" for r in rows if r["bound"] == "continuous" and r["ratio"] > args.target]
    verdict = "all pass" if not over else "over: " + ", ".join(over)
    print(f"target <= {args.target}x a forward (continuous bound): {verdict}")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
