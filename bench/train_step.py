"""Training step-time breakdown and throughput of the real trainer (pipeline/train.py, DeepSpeed ZeRO-2).

    python bench/train_step.py [--tiny-steps 20] [--small-steps 4] [--skip-small]
                               [--kernel semdlm_plus --neighbors NN_DIR]

For each model (``tiny`` at B=16, L=32; ``small`` at B=8, L=128) it builds a preprocess artifact of
that length from the shared LM1B sample, runs ``pipeline/train.py`` as one process with per-step
logging and no checkpoints, and reads the trainer's own timers from metrics.jsonl. The first step
(allocation, warm-up) is left out. Printed per model, all measured in this run:

  * seconds per step and the share of each phase: data wait (StreamingDataLoader), corruption
    (time sampling + kernel.sample_xt + loss weights), forward/backward, optimizer (the DeepSpeed
    step at the accumulation boundary);
  * tokens/s (all positions, padding included);
  * the loader-wait share against the 5 % target;
  * MFU against --peak-flops, only when CUDA is available (bf16 there).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpora" / "lm1b_sample" / "train.txt"
PHASES = ("data_wait", "corruption", "forward_backward", "optimizer")


def build_data(out: Path, seq_len: int) -> Path:
    if not (out / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "preprocess", "--input", str(CORPUS), "--valid-fraction", "0.05",
                        "--out", str(out), "--mode", "lm1b", "--seq-len", str(seq_len), "--no-progress"],
                       cwd=REPO, check=True, capture_output=True)
    return out


# --compare: the eager step with the default fused AdamW against the same step with foreach AdamW
# and with torch.compile (issue 15); the first step, which compiles, is left out like every first step
VARIANTS = {"eager, fused AdamW (default)": [], "eager, foreach AdamW": ["adamw=foreach"],
            "compile, fused AdamW": ["compile=true"]}


def run_trainer(run_dir: Path, data: Path, model: str, batch: int, steps: int, kernel: str,
                neighbors: str | None, extra: list[str] | None = None) -> list[dict]:
    overrides = [f"model={model}", f"global_batch={batch}", f"micro_batch={batch}", f"max_steps={steps}",
                 "log_every=1", "val_every=0", "ckpt_every=0", "seq_len=null", "warmup_steps=1", *(extra or [])]
    cmd = [sys.executable, "pipeline/train.py", "--ds_config", "ds_configs/zero2.json", "--config",
           "configs/tiny.yaml", "--run-dir", str(run_dir), "--preprocessed", str(data), "--kernel", kernel,
           *(["--neighbors", neighbors] if neighbors else []), *overrides]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"trainer failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "perf/step_time_s" in r and r["step"] > 1]


def summarise(name: str, records: list[dict], tokens_per_step: int, peak_flops: float | None) -> dict:
    step_time = sum(r["perf/step_time_s"] for r in records) / len(records)
    shares = {p: sum(r[f"perf/{p}_share"] * r["perf/step_time_s"] for r in records) /
              sum(r["perf/step_time_s"] for r in records) for p in PHASES}
    out = {"model": name, "steps": len(records), "step_time_s": step_time, "tokens_per_s": tokens_per_step / step_time,
           **{f"{p}_share": v for p, v in shares.items()}}
    if "perf/mfu" in records[-1]:
        out["mfu"] = sum(r["perf/mfu"] for r in records) / len(records)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny-steps", type=int, default=20)
    p.add_argument("--small-steps", type=int, default=4)
    p.add_argument("--skip-small", action="store_true")
    p.add_argument("--skip-tiny", action="store_true", help="with --compare: small only")
    p.add_argument("--kernel", default="mask")
    p.add_argument("--neighbors", default=None, help="neighbor_index artifact (semantic kernels; built on the "
                   "same tokenizer, any sequence length)")
    p.add_argument("--work-dir", default=None, help="keep data and runs here (default: a temp dir)")
    p.add_argument("--compare", action="store_true",
                   help="eager vs foreach AdamW vs torch.compile, s/step per model (instead of the breakdown)")
    args = p.parse_args(argv)
    if args.compare:
        return compare(args)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_train_"))
    cases = [("tiny", 16, 32, args.tiny_steps)]
    if not args.skip_small:
        cases.append(("small", 8, 128, args.small_steps))
    rows = []
    for model, batch, seq_len, steps in cases:
        data = build_data(work / f"data{seq_len}", seq_len)
        run_dir = work / f"run_{model}"
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)
        records = run_trainer(run_dir, data, model, batch, steps + 1, args.kernel, args.neighbors)
        rows.append(summarise(model, records, batch * seq_len, None))
    print(f"\ntrain step breakdown ({args.kernel} kernel, 1 process, DeepSpeed ZeRO-2, "
          f"{'CUDA bf16' if rows and 'mfu' in rows[0] else 'CPU fp32'}; first step excluded)")
    header = f"{'model':6} {'B x L':>8} {'steps':>5} {'s/step':>8} {'tokens/s':>10} " + \
        " ".join(f"{p:>16}" for p in PHASES) + ("  mfu" if rows and "mfu" in rows[0] else "")
    print(header)
    for (model, batch, seq_len, _), r in zip(cases, rows):
        line = (f"{model:6} {f'{batch}x{seq_len}':>8} {r['steps']:5d} {r['step_time_s']:8.3f} "
                f"{r['tokens_per_s']:10.1f} " + " ".join(f"{100 * r[f'{p}_share']:15.2f}%" for p in PHASES))
        if "mfu" in r:
            line += f"  {100 * r['mfu']:.1f}%"
        print(line)
    for r in rows:
        verdict = "OK" if r["data_wait_share"] < 0.05 else "ABOVE TARGET"
        print(f"{r['model']}: loader wait {100 * r['data_wait_share']:.2f}% of the step (target < 5%): {verdict}")
    print(json.dumps(rows))
    return 0


def compare(args) -> int:
    """s/step of each VARIANTS entry, one run each, and its ratio to the default (eager, fused AdamW)."""
    import shutil

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench_train_"))
    cases = ([] if args.skip_tiny else [("tiny", 16, 32, args.tiny_steps)]) + \
        ([] if args.skip_small else [("small", 8, 128, args.small_steps)])
    print(f"{'model':6} {'variant':30} {'s/step':>8} {'tokens/s':>10} {'vs default':>10}")
    for model, batch, seq_len, steps in cases:
        data = build_data(work / f"data{seq_len}", seq_len)
        base = None
        for name, extra in VARIANTS.items():
            run_dir = work / f"run_{model}_{len(extra) and extra[0].split('=')[0]}"
            shutil.rmtree(run_dir, ignore_errors=True)
            r = summarise(model, run_trainer(run_dir, data, model, batch, steps + 1, args.kernel, args.neighbors,
                                             extra), batch * seq_len, None)
            base = base or r["step_time_s"]
            print(f"{model:6} {name:30} {r['step_time_s']:8.3f} {r['tokens_per_s']:10.1f} "
                  f"{r['step_time_s'] / base:9.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
