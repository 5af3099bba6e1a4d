"""Benchmark: throughput of ``small`` on one GPU at the paper's shapes, one command (issue 17, part 2).

    PYTHONPATH=. .venv/bin/python -m bench.gpu                 # one GPU: <= 8 minutes, table + bench_out/gpu.json
    PYTHONPATH=. .venv/bin/python -m bench.gpu --smoke         # CPU, tiny shapes, 1-2 steps of every path (CI)

Training (bf16 autocast on GPU: the production precision ``auto``): the production step,
``Trainer.train_step`` (host-to-device copy, corruption with the mask kernel, Eq 120 loss, DeepSpeed
backward and step with torch's fused AdamW, EMA), on an engine from ``pipeline.training.launch.build_engine`` and
``ds_configs/zero{1,2,3}.json`` through our ds_config builder, one rank. The data are random token
batches held in memory (no corpus is needed on the GPU machine; loader cost is bench/train_step.py's).
Rows: the LM1B shape (L = 128, micro-batch 64, as configs/lm1b_small.yaml) and the OWT shape
(L = 1024, micro-batch 16, as configs/owt_small.yaml), each with ZeRO-2, ZeRO-2 + torch.compile,
ZeRO-2 + activation checkpointing, ZeRO-1 and ZeRO-3 (and at OWT compile + checkpointing together).
Per row: tokens/s over ``--steps`` timed steps after ``--warmup``, MFU = tokens/s x
``flops_per_token`` (6 N + 12 n_layer d L, pipeline.core.model) / the device's dense bf16 peak
(``PEAKS``, or ``--peak-flops``), peak memory allocated by the row (CUDA), and the SDPA backend the
step actually ran (read from a profiled step: flash / mem-efficient / cudnn / math).

Sampling and evaluation run the model as production does (fp32 weights, no autocast): sampler
tokens/s of ``mdlm`` (mask kernel) and ``ctmc`` (semdlm_plus, Eq 23 penalty on) at 128 and 1024 steps
(``bench.sampler``), and likelihood-bound tokens/s of ``mask`` and ``semdlm_plus`` at both shapes
(``bench.likelihood``, the output read as a default-trained export is read: kernel-aware, each bound
corrected and uncorrected), with a random bert-size neighbour table.

``--budget-s`` (default 480 s) skips the rows that would start after it (marked skipped in the table
and the JSON). ``--smoke``: the tiny model at L = 32 / 64, one warm-up and two timed steps, every
training variant once (compile with the ``aot_eager`` backend: dynamo and AOT autograd without the
minutes of inductor code generation a CPU needs), samplers at 4 / 8 steps, the likelihood at L = 16.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.kernels import BERT_MASK_ID  # noqa: E402
from pipeline.core.model import BERT_VOCAB_SIZE  # noqa: E402

# Dense bf16 tensor-core peaks (FLOP/s) by device name, most specific first (NVIDIA data sheets).
PEAKS = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("GH200", 989e12), ("H200", 989e12), ("H100", 989e12),
         ("H800", 989e12), ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L4", 121e12),
         ("A10G", 70e12), ("A10", 125e12), ("V100", 125e12))
MFU_TARGET = 0.45  # issue 17: small at seq 1024 in bf16 on an H100/H200-class GPU


@dataclass(frozen=True)
class TrainSpec:
    shape: str          # "lm1b" / "owt"
    seq_len: int
    batch: int          # micro-batch = global batch (one rank, no accumulation)
    zero: int
    compile: bool
    checkpointing: bool

    @property
    def name(self) -> str:
        extras = [x for x, on in (("compile", self.compile), ("ckpt", self.checkpointing)) if on]
        return f"{self.shape} zero{self.zero}" + (" + " + " + ".join(extras) if extras else "")


def train_plan(shapes: dict[str, tuple[int, int]], smoke: bool, with_compile: bool) -> list[TrainSpec]:
    """Per shape: ZeRO-2, + compile, + activation checkpointing, ZeRO-1, ZeRO-3; compile + checkpointing at
    the last (longest) shape. Smoke: the ZeRO / checkpointing variants at the first shape, compile +
    checkpointing at the last: every code path once."""
    names = list(shapes)
    if smoke:
        (L, B), (L2, B2) = shapes[names[0]], shapes[names[-1]]
        plan = [TrainSpec(names[0], L, B, z, False, k) for z, k in ((2, False), (2, True), (1, False), (3, False))]
        return plan + [TrainSpec(names[-1], L2, B2, 2, with_compile, True)]
    plan = []
    for i, shape in enumerate(names):
        L, B = shapes[shape]
        variants = [(2, False, False)] + ([(2, True, False)] if with_compile else []) + [(2, False, True)]
        if with_compile and i == len(names) - 1:
            variants.append((2, True, True))
        variants += [(1, False, False), (3, False, False)]
        plan += [TrainSpec(shape, L, B, z, c, k) for z, c, k in variants]
    return plan


def device_peak(device: torch.device, override: float | None) -> tuple[str, float | None]:
    if device.type != "cuda":
        return "cpu", override
    name = torch.cuda.get_device_name(device)
    if override:
        return name, override
    return name, next((peak for key, peak in PEAKS if key in name), None)


def sdpa_backend(run_step) -> str:
    """The scaled-dot-product-attention kernel(s) ``run_step()`` actually dispatched to (profiler op names)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_step()
    names = {e.key for e in prof.key_averages()}
    found = []
    for needle, label in (("_scaled_dot_product_flash_attention_for_cpu", "flash (cpu)"),
                          ("_scaled_dot_product_flash_attention", "flash"),
                          ("_scaled_dot_product_efficient_attention", "mem-efficient"),
                          ("_scaled_dot_product_cudnn_attention", "cudnn"),
                          ("_scaled_dot_product_attention_math", "math")):
        hits = {n for n in names if needle in n}
        if hits:
            found.append(label)
            names -= hits
    return "+".join(found) or "unknown"


class RandomTokens:
    """What Trainer reads from a data stream: a few fixed random micro-batches of real tokens, cycled."""

    def __init__(self, batch: int, seq_len: int, vocab: int, pin: bool, seed: int = 0, count: int = 4):
        g = torch.Generator().manual_seed(seed)
        self.batches = [torch.randint(999, vocab, (batch, seq_len), generator=g) for _ in range(count)]
        if pin:
            self.batches = [b.pin_memory() for b in self.batches]
        self.i = 0

    def next(self) -> dict:
        tokens = self.batches[self.i % len(self.batches)]
        self.i += 1
        return {"tokens": tokens, "sample_id": torch.arange(len(tokens))}

    def state_dict(self) -> dict:
        return {"i": self.i}

    def load_state_dict(self, state: dict) -> None:
        self.i = state["i"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_row(spec: TrainSpec, args, env, peak: float | None, work: Path) -> dict:
    from pipeline.core.kernels import make_kernel
    from pipeline.core.model import flops_per_token
    from pipeline.core.objectives import build_objective
    from pipeline.training.config import TrainConfig
    from pipeline.training.ds_config import load_ds_config, patch_ds_config
    from pipeline.training.launch import build_engine
    from pipeline.training.loop import Trainer

    device, cuda = env.device, env.device.type == "cuda"
    cfg = TrainConfig(model=args.model, model_args={"activation_checkpointing": spec.checkpointing},
                      global_batch=spec.batch, micro_batch=spec.batch, max_steps=10 ** 9, warmup_steps=1,
                      val_every=0, ckpt_every=0, log_every=10 ** 9, compile=spec.compile, kernel="mask")
    model_cfg = cfg.model_config(BERT_VOCAB_SIZE, spec.seq_len)
    ds_config = patch_ds_config(load_ds_config(REPO / "ds_configs" / f"zero{spec.zero}.json"), cfg, 1, cuda)
    base = torch.cuda.memory_allocated(device) if cuda else 0
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    engine, _ = build_engine(cfg, model_cfg, ds_config, env, compile_backend=args.compile_backend)
    kernel = make_kernel(cfg.kernel_config(), BERT_VOCAB_SIZE, BERT_MASK_ID, None, device)
    trainer = Trainer(cfg, engine, build_objective(kernel, cfg.loss, cfg.loss_config()),
                      RandomTokens(spec.batch, spec.seq_len, BERT_VOCAB_SIZE, pin=cuda), None, env,
                      work / spec.name.replace(" ", "_").replace("+", ""), {}, {"identity_hash": "bench-gpu"},
                      flops_per_token(model_cfg, spec.seq_len), spec.seq_len, None)
    try:
        for _ in range(args.warmup):  # allocation, autotuning, compilation
            trainer.train_step()
        backend = sdpa_backend(trainer.train_step)
        _sync(device)
        warm_s = time.perf_counter() - start
        t0 = time.perf_counter()
        losses = [trainer.train_step()["loss"] for _ in range(args.steps)]
        _sync(device)
        step_s = (time.perf_counter() - t0) / args.steps
        tps = spec.batch * spec.seq_len / step_s
        fpt = flops_per_token(model_cfg, spec.seq_len)
        return {"row": spec.name, "shape": spec.shape, "seq_len": spec.seq_len, "batch": spec.batch,
                "zero": spec.zero, "compile": spec.compile, "checkpointing": spec.checkpointing,
                "precision": "bf16" if ds_config["torch_autocast"]["enabled"] else "fp32",
                "step_s": step_s, "tokens_per_s": tps, "flops_per_token": fpt,
                "mfu": tps * fpt / peak if peak else None,
                "peak_mem_gib": (torch.cuda.max_memory_allocated(device) - base) / 2 ** 30 if cuda else None,
                "sdpa": backend, "setup_and_warmup_s": warm_s, "final_loss": losses[-1]}
    finally:
        trainer.logger.close()
        if hasattr(engine, "destroy"):
            engine.destroy()
        del trainer, engine
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()


def sampler_rows(args, device: torch.device) -> list[dict]:
    from bench.kernels import build
    from bench.sampler import TimedModel, bench_model, bench_tables, sampler_config, time_generate
    from pipeline.sampling.penalty import SemanticAssociation

    tables, association = bench_tables(args.k_max, args.assoc_k)
    association = SemanticAssociation(*(x.to(device) for x in association))
    kernels = {name: build(name, tables, BERT_VOCAB_SIZE, device) for name in ("semdlm_plus", "mask")}
    model = TimedModel(bench_model(args.model, args.sample_seq_len).to(device))
    rows = []
    for name in ("mdlm", "ctmc"):
        warm, kernel_name = sampler_config(name, 2, args.sample_seq_len, 1)
        time_generate(model, kernels[kernel_name], warm, args.sample_batch, association)  # caches, autotuning
        for steps in args.sample_steps:
            cfg, _ = sampler_config(name, steps, args.sample_seq_len, 1)
            r = time_generate(model, kernels[kernel_name], cfg, args.sample_batch, association)
            rows.append({"sampler": name, "kernel": kernel_name, "steps": steps, "seq_len": args.sample_seq_len,
                         "batch": args.sample_batch, "tokens_per_s": r["tokens_per_s"], "seconds": r["total"],
                         "calls": r["calls"], "outside_network": r["outside"]})
    return rows


def likelihood_rows(args, device: torch.device, shapes: dict[str, tuple[int, int]]) -> list[dict]:
    from bench.kernels import random_neighbor_tables
    from bench.likelihood import bench_model

    tables = random_neighbor_tables(BERT_VOCAB_SIZE, args.k_max)
    rows = []
    for shape, (L, B) in shapes.items():
        batch = max(1, B // args.eval_batch_divisor)
        # read as python -m pipeline.evaluate reads a default-trained export (kernel-aware, corrected + uncorrected)
        for r in bench_model(args.model, batch, L, ("mask", "semdlm_plus"), tables, args.eval_reps, False, device,
                             reading="default"):
            rows.append({"shape": shape, "seq_len": L, "batch": batch, "kernel": r["kernel"],
                         "bound": r["bound"], "reading": r["reading"], "tokens_per_s": 1e6 / r["us_per_token"],
                         "bound_over_forward": r["ratio"]})
    return rows


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def _shape(r: dict) -> str:
    return f"{r['batch']}x{r['seq_len']}"


def _print_table(title: str, header: str, rows: list[dict], label: str, width: int, line) -> None:
    """A titled table: ``line(row)`` for measured rows, the ``label`` column and the reason for skipped ones."""
    print(title)
    print(header)
    for r in rows:
        print(f"{r[label]:<{width}}  skipped: {r['skipped']}" if r.get("skipped") else line(r))


def _train_line(r: dict) -> str:
    mfu = _fmt(r["mfu"] and 100 * r["mfu"], ".1f")
    return (f"{r['row']:<34}{_shape(r):>10}{r['precision']:>6}{r['step_s']:>9.4f}{r['tokens_per_s']:>11.0f}"
            f"{mfu + ('%' if r['mfu'] else ''):>8}{_fmt(r['peak_mem_gib'], '.2f'):>10}  {r['sdpa']}")


def print_report(report: dict) -> None:
    print(f"\ndevice: {report['device']} (bf16 peak {_fmt(report['peak_flops'], '.3g', 'unknown')} FLOP/s), "
          f"torch {report['torch']}, deepspeed {report['deepspeed']}{', SMOKE' if report['smoke'] else ''}")
    _print_table(f"\ntraining: model {report['model']}, one rank, Trainer.train_step (corruption, loss, DeepSpeed "
                 "step, EMA)",
                 f"{'row':<34}{'B x L':>10}{'prec':>6}{'s/step':>9}{'tokens/s':>11}{'MFU':>8}{'peak GiB':>10}  SDPA",
                 report["train"], "row", 34, _train_line)
    _print_table(f"\nsampling: model {report['model']}, fp32 (the production path), random neighbour table",
                 f"{'sampler':<8}{'kernel':<13}{'steps':>6}{'B x L':>10}{'tokens/s':>11}{'seconds':>9}{'calls':>7}",
                 report["sampler"], "sampler", 8,
                 lambda r: (f"{r['sampler']:<8}{r['kernel']:<13}{r['steps']:>6}{_shape(r):>10}"
                            f"{r['tokens_per_s']:>11.1f}{r['seconds']:>9.2f}{r['calls']:>7}"))
    _print_table(f"\nlikelihood bound (continuous, one t per sequence), model {report['model']}, fp32",
                 f"{'shape':<7}{'kernel':<13}{'B x L':>10}{'tokens/s':>11}{'bound/forward':>15}",
                 report["likelihood"], "shape", 7,
                 lambda r: (f"{r['shape']:<7}{r['kernel']:<13}{_shape(r):>10}{r['tokens_per_s']:>11.0f}"
                            f"{r['bound_over_forward']:>14.2f}x"))
    print(f"\ntotal {report['elapsed_s']:.0f} s")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny model, tiny shapes, 1-2 steps of every path (CPU/CI)")
    p.add_argument("--model", default=None, help="model preset (default: small; tiny with --smoke)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps per row (default 10; smoke 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; smoke 1)")
    p.add_argument("--batch-lm1b", type=int, default=64, help="micro-batch at L = 128")
    p.add_argument("--batch-owt", type=int, default=16, help="micro-batch at L = 1024")
    p.add_argument("--compile", choices=("on", "off"), default="on", help="include the torch.compile rows")
    p.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; smoke "
                   "aot_eager)")
    p.add_argument("--sample-steps", default=None, help="comma-separated sampler steps (default 128,1024)")
    p.add_argument("--sample-seq-len", type=int, default=None, help="generated length (default 1024)")
    p.add_argument("--sample-batch", type=int, default=None, help="sequences per generate call (default 2)")
    p.add_argument("--eval-batch-divisor", type=int, default=2, help="likelihood batch = training micro-batch / this")
    p.add_argument("--eval-reps", type=int, default=None, help="timed likelihood calls (default 5; smoke 1)")
    p.add_argument("--k-max", type=int, default=64)
    p.add_argument("--assoc-k", type=int, default=16)
    p.add_argument("--peak-flops", type=float, default=None, help="dense bf16 peak per device (default: by name)")
    p.add_argument("--budget-s", type=float, default=480.0, help="skip rows that would start after this")
    p.add_argument("--skip", default="", help="comma-separated sections to skip: train, sampler, likelihood")
    p.add_argument("--json", default="bench_out/gpu.json", help="where to write the results")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    smoke = args.smoke
    args.model = args.model or ("tiny" if smoke else "small")
    args.steps = args.steps or (2 if smoke else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if smoke else 3)
    args.compile_backend = args.compile_backend or ("aot_eager" if smoke else "inductor")
    args.sample_steps = [int(s) for s in (args.sample_steps or ("4,8" if smoke else "128,1024")).split(",")]
    args.sample_seq_len = args.sample_seq_len or (16 if smoke else 1024)
    args.sample_batch = args.sample_batch or 2
    args.eval_reps = args.eval_reps or (1 if smoke else 5)
    shapes = {"lm1b": (32, 4), "owt": (64, 2)} if smoke else {"lm1b": (128, args.batch_lm1b),
                                                              "owt": (1024, args.batch_owt)}
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if skip - {"train", "sampler", "likelihood"}:
        p.error(f"--skip: unknown sections {sorted(skip - {'train', 'sampler', 'likelihood'})}")
    plan = [] if "train" in skip else train_plan(shapes, smoke, args.compile == "on")

    import deepspeed

    from pipeline.training.distributed import init_distributed

    start = time.perf_counter()
    env = init_distributed(None)
    device = env.device
    if device.type != "cuda" and not smoke:
        print("warning: no GPU: running the full plan on the CPU (use --smoke for a quick check)", file=sys.stderr)
    name, peak = device_peak(device, args.peak_flops)
    report = {"device": name, "peak_flops": peak, "torch": torch.__version__, "deepspeed": deepspeed.__version__,
              "smoke": smoke, "model": args.model, "mfu_target": MFU_TARGET, "train": [], "sampler": [],
              "likelihood": []}

    def over_budget() -> str | None:
        elapsed = time.perf_counter() - start
        return f"budget {args.budget_s:.0f} s spent ({elapsed:.0f} s)" if elapsed > args.budget_s else None

    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        for spec in plan:
            reason = over_budget()
            row = {"row": spec.name, "skipped": reason} if reason else train_row(spec, args, env, peak, Path(tmp))
            report["train"].append(row)
            if not reason:
                print(f"{spec.name}: {row['tokens_per_s']:.0f} tokens/s, SDPA {row['sdpa']} "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
    for section, fn in (("sampler", lambda: sampler_rows(args, device)),
                        ("likelihood", lambda: likelihood_rows(args, device, shapes))):
        if section in skip:
            continue
        reason = over_budget()
        key = "sampler" if section == "sampler" else "shape"
        report[section] = [{key: "all", "skipped": reason}] if reason else fn()
    report["elapsed_s"] = time.perf_counter() - start
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    print_report(report)
    owt = [r for r in report["train"] if r.get("shape") == "owt" and r.get("mfu") is not None]
    if owt and device.type == "cuda":
        best = max(owt, key=lambda r: r["mfu"])
        print(f"best MFU at the OWT shape: {100 * best['mfu']:.1f}% ({best['row']}); target >= "
              f"{100 * MFU_TARGET:.0f}%: {'PASS' if best['mfu'] >= MFU_TARGET else 'FAIL'}")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
