"""Benchmark: sampler throughput and the share of wall time spent outside the network (issue 14).

Target (issue 14): with the Eq 23 penalty on, the ``ctmc`` sampler spends <= 10 % of its wall time
outside the network on CPU (``small`` model, random weights). One run measures, on a random
k_max = 64 neighbour table of the bert vocabulary (30,522 tokens, laid out like the neighbor_index
artifact by ``bench.kernels.random_neighbor_tables``; S+ = the diagonal + 16 neighbours per token,
built by ``semantic_association_rows`` as the artifact is):

1. per sampler and number of steps (one timed ``generate`` each, after an untimed warm-up that builds
   the kernel's caches): generated tokens/s, network calls per sample (``Denoiser.calls``) and the
   share of the wall time outside the network, 1 - forward time / total time, where the forward time
   is accumulated around every model call by :class:`TimedModel`. Samplers: ``ctmc`` (semdlm_plus,
   penalty on: lambda_freq = 1, lambda_sem = 0.5, W = 16; 1 corrector step), ``ctmc_c0`` (the same
   with ``--corrector-steps 0``), ``blockwise`` and ``tau_leaping`` (semdlm_plus, penalty on) and
   ``mdlm`` (mask kernel, no penalty);
2. what one network call of ``ctmc`` costs besides the forward, part by part (medians of ``--repeats``
   at the shape of the last block: B rows, L / strides positions, context L): the penalty, the float64
   softmax, the renormalisation, the predictor and the corrector move; and for ``blockwise`` the
   kernel projection (the former "penalty + projection <= 10 % of a forward" table of issue 6).

The last line is ``ctmc_outside_share=<x.xxx>`` (ctmc at the largest number of steps measured). The
machine may be shared: timings are ratios within the run. ``--threads 1`` avoids torch's thread pool
waiting on a busy core (docs/benchmarks.md). The MDLM logits cache at T >> L: ``bench/mdlm_cache.py``.

    .venv/bin/python -m bench.sampler --threads 1                 # small, B=2, L=128, strides 2, T=128,512
    .venv/bin/python -m bench.sampler --quick                     # tiny model, T=16: a smoke test
    .venv/bin/python -m bench.sampler --methods ctmc,mdlm --steps 128 --batch 4
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from bench.kernels import build, random_neighbor_tables
from pipeline.common.cpu_host import keep_freed_memory_on_cpu
from pipeline.common.neighbor_artifact import semantic_association_rows
from pipeline.core.ct_tables import time_tables
from pipeline.core.model import BERT_VOCAB_SIZE, DiffusionTransformer, ModelConfig
from pipeline.sampling import PenaltyConfig, SamplerConfig, association_by_columns, generate
from pipeline.sampling.base import Denoiser
from pipeline.sampling.ctmc import corrector_step, predictor_step
from pipeline.sampling.draws import categorical, truncate
from pipeline.sampling.penalty import apply_semantic_frequency_penalty

# name -> (SamplerConfig.method, kernel, penalty on, extra SamplerConfig fields)
SAMPLERS = {
    "ctmc": ("ctmc", "semdlm_plus", True, {}),
    "ctmc_c0": ("ctmc", "semdlm_plus", True, {"corrector_steps": 0}),
    "blockwise": ("blockwise", "semdlm_plus", True, {}),
    "tau_leaping": ("tau_leaping", "semdlm_plus", True, {}),
    "mdlm": ("mdlm", "mask", False, {}),
}
PENALTY = PenaltyConfig(lambda_freq=1.0, lambda_sem=0.5, window=16)  # the semantic kernels' sampling default
TARGET = 0.10


class TimedModel(torch.nn.Module):
    """The model with the wall time of its forward calls accumulated (``seconds``; ``calls``, ``rows``).

    ``cfg`` is the model's: the samplers read ``cfg.conditioned`` (the MDLM cache needs a t-free model).
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.cfg = model, model.cfg
        self.reset()

    def forward(self, x, *args, **kwargs):
        start = time.perf_counter()
        out = self.model(x, *args, **kwargs)
        if out.is_cuda:
            torch.cuda.synchronize(out.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        self.rows += x.shape[0]  # sequences evaluated (the MDLM cache sends only the rows that changed)
        return out

    def reset(self) -> None:
        self.seconds, self.calls, self.rows = 0.0, 0, 0


def bench_model(preset: str, seq_len: int, seed: int = 0, **overrides) -> DiffusionTransformer:
    """A ``preset`` model with the bert vocabulary and random weights, the output layer included (MDLM
    initialises it to zero: a uniform p_theta would make every sampler's draws atypical)."""
    torch.manual_seed(seed)
    cfg = ModelConfig.preset(preset, vocab_size=BERT_VOCAB_SIZE, max_seq_len=max(seq_len, 256), **overrides)
    model = DiffusionTransformer(cfg).eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.head.weight, std=0.02 if preset == "small" else 0.3)
    return model


def bench_tables(k_max: int, assoc_k: int):
    """(random neighbour tables of the bert vocabulary, S+ by columns)."""
    tables = random_neighbor_tables(BERT_VOCAB_SIZE, k_max)
    neighbors, sims = tables[0], tables[1]
    return tables, association_by_columns(*semantic_association_rows(neighbors.numpy(), sims.numpy(), assoc_k))


def time_generate(model: TimedModel, kernel, cfg: SamplerConfig, batch: int, association, seed: int = 0) -> dict:
    """One timed ``generate``: total and forward seconds, calls, the ids."""
    model.reset()
    start = time.perf_counter()
    ids, den = generate(model, kernel, cfg, batch, torch.Generator(device=kernel.device).manual_seed(seed),
                        association=association)
    if ids.is_cuda:
        torch.cuda.synchronize(ids.device)
    total = time.perf_counter() - start
    return {"total": total, "forward": model.seconds, "calls": den.calls, "ids": ids,
            "outside": 1.0 - model.seconds / total, "tokens_per_s": ids.numel() / total}


def sampler_config(name: str, steps: int, seq_len: int, strides: int) -> tuple[SamplerConfig, str]:
    method, kernel_name, penalty, extra = SAMPLERS[name]
    cfg = SamplerConfig(method=method, steps=steps, seq_len=seq_len, strides=strides,
                        penalty=PENALTY if penalty else PenaltyConfig(), **extra)
    return cfg, kernel_name


def throughput_table(model: TimedModel, kernels: dict, association, args) -> dict[tuple[str, int], dict]:
    print(f"{'sampler':<12}{'kernel':<13}{'penalty':<9}{'steps':>6}{'calls/sample':>14}{'total s':>10}"
          f"{'forward s':>11}{'tokens/s':>10}{'outside':>9}")
    results = {}
    for name in args.methods:
        warm, kernel_name = sampler_config(name, 2 * args.strides, args.seq_len, args.strides)
        time_generate(model, kernels[kernel_name], warm, args.batch, association)  # builds the caches
        for steps in args.steps:
            cfg, _ = sampler_config(name, steps, args.seq_len, args.strides)
            r = results[name, steps] = time_generate(model, kernels[kernel_name], cfg, args.batch, association)
            print(f"{name:<12}{kernel_name:<13}{'on' if cfg.penalty.enabled else 'off':<9}{steps:>6}{r['calls']:>14}"
                  f"{r['total']:>10.2f}{r['forward']:>11.2f}{r['tokens_per_s']:>10.2f}{r['outside']:>9.1%}",
                  flush=True)
    return results


def median_seconds(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def component_table(model: torch.nn.Module, kernel, association, args) -> None:
    """The parts of one ctmc call at the last block's shape, each as a share of one forward."""
    B, L, P = args.batch, args.seq_len, args.seq_len - args.seq_len // args.strides
    g = torch.Generator().manual_seed(0)
    x = kernel.sample_prior((B, L), generator=g)
    t_vec = torch.full((B,), 0.5)
    t, s = 0.5, 0.5 - 1.0 / args.steps[-1]
    forward_s = median_seconds(lambda: model(x, t_vec), args.repeats)
    logits = model(x, t_vec)[:, P:]  # a view, as in Denoiser.logits: the penalty writes into a contiguous copy
    den = Denoiser(model, kernel, SamplerConfig(method="ctmc", penalty=PENALTY), association)
    probs = truncate(den.probs_from_logits(logits))
    z, flat = x[:, P:].reshape(-1), probs.reshape(-1, kernel.vocab_size)
    new_t = iter(torch.rand(2 * args.repeats + 2, generator=g).tolist())  # time tables are memoised per t
    parts = {
        "penalty (W=16, S+ = diag + 16)": lambda: apply_semantic_frequency_penalty(
            logits, x, PENALTY, association, P, inplace=True),
        "float64 softmax (probs_from_logits)": lambda: den.probs_from_logits(logits),
        "renormalisation (truncate)": lambda: truncate(probs),
        "schedule tables at a new t": lambda: time_tables(kernel, torch.full((1,), next(new_t), dtype=torch.float64)),
        "ctmc predictor move": lambda: predictor_step(kernel, flat, z, t, s, generator=g),
        "ctmc corrector move": lambda: corrector_step(kernel, flat, z, s, t - s, generator=g),
        "  of which the v ~ p_theta draw": lambda: categorical(flat, g),
        "blockwise projection (sample_xt)": lambda: kernel.sample_xt(z.reshape(B, -1), torch.full((B,), s),
                                                                     generator=g),
    }
    print(f"\nparts of one ctmc call, {L - P} positions x {B} rows (context {L}), medians of {args.repeats}:")
    print(f"{'part':<38}{'ms':>9}{'/ forward':>11}")
    print(f"{'forward':<38}{forward_s * 1e3:>9.1f}{1:>11.1%}")
    for name, fn in parts.items():
        sec = median_seconds(fn, args.repeats)
        print(f"{name:<38}{sec * 1e3:>9.2f}{sec / forward_s:>11.2%}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=("small", "tiny"), default="small")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--strides", type=int, default=2)
    p.add_argument("--steps", default="128,512", help="comma-separated total steps")
    p.add_argument("--methods", default=",".join(SAMPLERS), help=f"comma-separated, of {', '.join(SAMPLERS)}")
    p.add_argument("--k-max", type=int, default=64)
    p.add_argument("--assoc-k", type=int, default=16, help="S+ neighbours per token (neighbor_index default)")
    p.add_argument("--repeats", type=int, default=5, help="repeats of each part in the second table")
    p.add_argument("--no-parts", action="store_true", help="skip the second table")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="tiny model, L=16, T=16, 2 repeats: a smoke test")
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.seq_len, args.steps, args.repeats = "tiny", 16, "16", 2
    args.steps = sorted({int(s) for s in args.steps.split(",")})
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(args.methods) - set(SAMPLERS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; choose from {list(SAMPLERS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory_on_cpu("cpu")  # as python -m pipeline.sample does on CPU (pipeline/common/cpu_host.py)

    tables, association = bench_tables(args.k_max, args.assoc_k)
    kernels = {name: build(name, tables, BERT_VOCAB_SIZE) for name in ("semdlm_plus", "mask")}
    model = TimedModel(bench_model(args.model, args.seq_len))
    print(f"{args.model} model, B={args.batch}, L={args.seq_len}, strides={args.strides}, "
          f"V={BERT_VOCAB_SIZE}, k_max={args.k_max}, threads={torch.get_num_threads()}, CPU", flush=True)
    results = throughput_table(model, kernels, association, args)
    if not args.no_parts:
        component_table(model.model, kernels["semdlm_plus"], association, args)
    if "ctmc" not in args.methods:
        return 0
    share = results["ctmc", args.steps[-1]]["outside"]
    print(f"\nctmc (penalty on) outside the network at T={args.steps[-1]}: {share:.1%} "
          f"(target <= {TARGET:.0%}: {'PASS' if share <= TARGET else 'FAIL'})")
    print(f"ctmc_outside_share={share:.3f}")
    return 0 if args.quick or share <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
