"""Cost model of the paper's training runs (issue 17, part 3): the tables of docs/scaling.md.

    PYTHONPATH=. .venv/bin/python -m bench.scaling                           # projections at MFU 45 %
    PYTHONPATH=. .venv/bin/python -m bench.scaling --gpu-json bench_out/gpu.json  # MFU measured by bench/gpu.py

FLOPs per token come from ``pipeline.core.model.flops_per_token`` (checked against torch's FLOP counter
in tests/unit/test_model.py); the communicated bytes from the real ``small`` module (on the meta
device): under bf16 ``torch_autocast`` DeepSpeed reduces the gradients of ``nn.Linear`` weights in
bf16 and every other gradient (embedding, LayerNorm weights) in fp32, and the parameters it
all-gathers are the fp32 model weights. Everything else is an assumption, stated in ``GPUS`` and
``--mfu``; without ``--gpu-json`` every time is a projection.

Ring collectives: a reduce-scatter or all-gather of S bytes over n ranks moves S (n - 1) / n bytes
through each rank's slowest link (NCCL's bus bandwidth). Per optimizer step with ``accum``
micro-steps: ZeRO-1 reduce-scatters the gradients once and all-gathers the parameters once; ZeRO-2
reduce-scatters the gradients after every micro-step (DeepSpeed: "ZeRO stage >= 2 communicates during
non gradient accumulation boundaries as well") and all-gathers the parameters once; ZeRO-3 gathers
the parameters for every micro-step's forward and again for its backward, reduce-scatters the
gradients per micro-step, and our EMA gathers the parameters once more per step. The gradient
reduce-scatter overlaps the backward (``overlap_comm``; the backward is ~2/3 of the compute); the
ZeRO-1/2 parameter all-gather after the optimizer step does not.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from pipeline.core.model import ModelConfig, build_model, flops_per_token  # noqa: E402

# Per GPU: dense bf16 peak (data sheets), NCCL bus bandwidth inside a node (NVLink; nccl-tests on
# DGX-class machines) and across nodes (one InfiniBand HCA per GPU at ~90 % of line rate).
GPUS = {
    "A100": {"peak": 312e12, "nvlink": 230e9, "ib": 22e9, "note": "SXM4, NVLink 3 (600 GB/s), 8x HDR 200 Gb/s"},
    "H100": {"peak": 989e12, "nvlink": 360e9, "ib": 45e9, "note": "SXM5, NVLink 4 (900 GB/s), 8x NDR 400 Gb/s"},
}
# name: (optimizer steps, global batch, sequence length, micro-batch per GPU, hours the paper reports on 8 x A100)
RUNS = {"LM1B": (200_000, 512, 128, 64, 72.0), "OWT": (200_000, 512, 1024, 16, 144.0)}
CLUSTERS = (("1 node", 8), ("4 nodes", 32))
BACKWARD_SHARE = 2.0 / 3.0


def comm_bytes(cfg: ModelConfig) -> dict[str, float]:
    """Gradient bytes reduced (bf16 for nn.Linear weights under torch_autocast, fp32 otherwise), fp32 parameter
    bytes gathered, and the parameter counts behind them."""
    with torch.device("meta"):
        model = build_model(cfg)
    linear = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters())
    total = sum(p.numel() for p in model.parameters())
    return {"params": total, "linear_params": linear, "grad_bytes": 2.0 * linear + 4.0 * (total - linear),
            "param_bytes": 4.0 * total}


def step_comm(stage: int, accum: int, n: int, nbytes: dict) -> tuple[float, float]:
    """(overlappable, exposed) bytes through each rank's link per optimizer step (ring, (n - 1) / n)."""
    f = (n - 1) / n
    grads, params = nbytes["grad_bytes"] * f, nbytes["param_bytes"] * f
    if stage == 1:
        return grads, params
    if stage == 2:
        return accum * grads, params
    return accum * (grads + params), accum * params + params  # ZeRO-3: backward gathers overlap, forward + EMA not


def cost_rows(mfu: dict[str, float], cfg: ModelConfig) -> list[dict]:
    nbytes = comm_bytes(cfg)
    rows = []
    for run, (steps, batch, L, micro, paper_h) in RUNS.items():
        fpt = flops_per_token(cfg, L)
        tokens = steps * batch * L
        for gpu, spec in GPUS.items():
            for cluster, n in CLUSTERS:
                accum = max(1, batch // (micro * n))
                micro_n = batch // (accum * n)
                compute = batch * L * fpt / (n * spec["peak"] * mfu[run])  # s per optimizer step
                bw = spec["nvlink"] if n <= 8 else spec["ib"]
                row = {"run": run, "gpu": gpu, "cluster": cluster, "gpus": n, "micro": micro_n, "accum": accum,
                       "seq_len": L, "flops_per_token": fpt, "tokens": tokens, "mfu": mfu[run],
                       "tokens_per_s_per_gpu": mfu[run] * spec["peak"] / fpt, "compute_s": compute,
                       "hours_compute_bound": steps * compute / 3600, "paper_hours": paper_h}
                for stage in (1, 2, 3):
                    overlap, exposed = step_comm(stage, accum, n, nbytes)
                    hidden = min(overlap / bw, BACKWARD_SHARE * compute)
                    comm = (overlap + exposed) / bw
                    row[f"zero{stage}"] = {"comm_s": comm, "exposed_s": comm - hidden,
                                           "hours": steps * (compute + comm - hidden) / 3600}
                rows.append(row)
    return rows


def paper_implied_mfu(cfg: ModelConfig) -> dict[str, float]:
    """The MFU the paper's reported hours imply on 8 x A100 (312 TFLOP/s bf16 each)."""
    out = {}
    for run, (steps, batch, L, _, hours) in RUNS.items():
        out[run] = steps * batch * L * flops_per_token(cfg, L) / (8 * GPUS["A100"]["peak"] * hours * 3600)
    return out


def measured_mfu(path: Path) -> tuple[dict[str, float], str]:
    """Per run, the best MFU of the ZeRO-2 rows of a bench/gpu.py JSON at that run's shape."""
    report = json.loads(Path(path).read_text())
    out = {}
    for run, shape in (("LM1B", "lm1b"), ("OWT", "owt")):
        rows = [r for r in report["train"] if r.get("shape") == shape and r.get("zero") == 2 and r.get("mfu")]
        if not rows:
            raise SystemExit(f"{path}: no measured ZeRO-2 row with an MFU at the {shape} shape")
        out[run] = max(r["mfu"] for r in rows)
    return out, report["device"]


def print_tables(rows: list[dict], cfg: ModelConfig, source: str) -> None:
    nbytes = comm_bytes(cfg)
    print(f"model small: {nbytes['params']:,} parameters ({nbytes['linear_params']:,} in nn.Linear); per step "
          f"gradients {nbytes['grad_bytes'] / 1e6:.0f} MB (bf16 Linear + fp32 rest), fp32 parameters "
          f"{nbytes['param_bytes'] / 1e6:.0f} MB; MFU: {source}")
    print("\n| run | GPU | FLOPs/token | MFU | tokens/s per GPU | 8 GPUs: h | 32 GPUs: h | paper (8 x A100) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for run in RUNS:
        for gpu in GPUS:
            r8, r32 = (next(r for r in rows if r["run"] == run and r["gpu"] == gpu and r["gpus"] == n)
                       for n in (8, 32))
            print(f"| {run} | {gpu} | {r8['flops_per_token'] / 1e6:.1f} M | {100 * r8['mfu']:.0f} % "
                  f"| {r8['tokens_per_s_per_gpu']:,.0f} | {r8['hours_compute_bound']:.1f} "
                  f"| {r32['hours_compute_bound']:.1f} | {r8['paper_hours']:.0f} h |")
    print("\n| run | GPU | cluster | micro x accum | compute ms/step | ZeRO-1 comm / exposed ms | ZeRO-2 comm / "
          "exposed ms | ZeRO-3 comm / exposed ms | h (ZeRO-1 / 2 / 3) |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        z = [r[f"zero{s}"] for s in (1, 2, 3)]
        print(f"| {r['run']} | {r['gpu']} | {r['cluster']} ({r['gpus']}) | {r['micro']} x {r['accum']} "
              f"| {1e3 * r['compute_s']:.1f} | " + " | ".join(f"{1e3 * x['comm_s']:.1f} / {1e3 * x['exposed_s']:.1f}"
                                                            for x in z)
              + " | " + " / ".join(f"{x['hours']:.1f}" for x in z) + " |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mfu", type=float, default=0.45, help="assumed MFU (issue 17's target)")
    p.add_argument("--gpu-json", default=None, help="bench/gpu.py output: use its measured MFU per shape")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)
    cfg = ModelConfig.preset("small")
    if args.gpu_json:
        mfu, device = measured_mfu(Path(args.gpu_json))
        source = f"measured by bench/gpu.py on {device} (LM1B {100 * mfu['LM1B']:.1f} %, OWT {100 * mfu['OWT']:.1f} %)"
    else:
        mfu = dict.fromkeys(RUNS, args.mfu)
        source = f"assumed {100 * args.mfu:.0f} % (PROJECTION: no GPU measurement)"
    rows = cost_rows(mfu, cfg)
    print_tables(rows, cfg, source)
    implied = paper_implied_mfu(cfg)
    print("\nMFU implied by the paper's hours on 8 x A100: " +
          ", ".join(f"{run} {100 * v:.1f} %" for run, v in implied.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "paper_implied_mfu": implied}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
