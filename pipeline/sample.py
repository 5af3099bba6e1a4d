"""Draw samples from an exported diffusion model.

    python -m pipeline.sample --model EXPORT_DIR --out DIR [--method blockwise|tau_leaping|mdlm]
        [--steps 128] [--num-samples 64] [--batch-size 16] [--seq-len 128] [--strides 2] [--seed 0]
        [--top-k K] [--top-p P] [--rho 1] [--freeze-threshold C]
        [--schedule ancestral|fixed|tc|dtc] [--remask none|remdm_cap] [--remask-eta 0.02]
        [--corrector-steps 1] [--corrector-frac 0.1]
        [--lambda-freq 0] [--lambda-sem 0] [--window 16]

writes DIR/samples.jsonl (one record per sample: index, ids, text, seed, config) and
DIR/manifest.json (stage "sample"). Launched with several processes (torchrun: RANK, WORLD_SIZE)
the samples are split across ranks and rank 0 gathers them. Samplers: docs/sampling.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import torch

from pipeline.common.artifacts import StageRun, stage_errors
from pipeline.sampling.base import METHODS, MDLM_SCHEDULES, REMASK, SamplerConfig
from pipeline.common.neighbor_artifact import load_neighbor_tables
from pipeline.sampling.penalty import PenaltyConfig, association_by_columns
from pipeline.sampling.runner import dist_info, draw_samples, gather_parts, write_part

PROG = "python -m pipeline.sample"
STAGE = "sample"


def default_method(kernel_name: str) -> str:
    """mdlm for the mask kernel, the paper's blockwise sampler for every other kernel."""
    return "mdlm" if kernel_name == "mask" else "blockwise"


def _floats(text: str) -> list[float]:
    return [float(v) for v in str(text).split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in str(text).split(",") if v.strip()]


def add_sampler_args(p: argparse.ArgumentParser, grid: bool = False) -> None:
    """Sampler options; with ``grid`` --steps/--lambda-freq/--lambda-sem take comma lists (sweeps)."""
    p.add_argument("--method", choices=METHODS, default=None, help="default: mdlm for mask, else blockwise")
    p.add_argument("--steps", type=_ints if grid else int, default=[128] if grid else 128,
                   help="total denoising steps over all blocks" + (" (comma list)" if grid else ""))
    p.add_argument("--num-samples", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=None, help="default: the preprocessed sequence length, else 128")
    p.add_argument("--strides", type=int, default=2, help="semi-autoregressive blocks (paper: 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--rho", type=float, default=1.0, help="exponent of Eq 121 (blockwise)")
    p.add_argument("--freeze-threshold", type=float, default=None, help="blockwise: freeze tokens this confident")
    p.add_argument("--schedule", choices=MDLM_SCHEDULES, default="ancestral", help="mdlm unmasking schedule")
    p.add_argument("--remask", choices=REMASK, default="none", help="mdlm ancestral: ReMDM remasking")
    p.add_argument("--remask-eta", type=float, default=0.02)
    p.add_argument("--corrector-steps", type=int, default=1, help="tau_leaping corrector moves per step")
    p.add_argument("--corrector-frac", type=float, default=0.1)
    p.add_argument("--no-cache", action="store_true", help="mdlm: never reuse logits")
    p.add_argument("--lambda-freq", type=_floats if grid else float, default=[0.0] if grid else 0.0,
                   help="Eq 23 frequency penalty" + (" (comma list)" if grid else ""))
    p.add_argument("--lambda-sem", type=_floats if grid else float, default=[0.0] if grid else 0.0,
                   help="Eq 23 semantic penalty, needs neighbour tables" + (" (comma list)" if grid else ""))
    p.add_argument("--window", type=int, default=16, help="Eq 23 window radius W")
    p.add_argument("--tokenizer", default=None, help="tokenizer for decoding (default: the export's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="export directory (python -m pipeline.export)")
    p.add_argument("--out", required=True, help="output directory (samples.jsonl + manifest.json)")
    add_sampler_args(p)
    return p


def sampler_config(args, kernel_name: str, default_seq_len: int, steps: int | None = None,
                   lambda_freq: float | None = None, lambda_sem: float | None = None) -> SamplerConfig:
    """SamplerConfig from parsed options (the explicit values override them: sweep points)."""
    return SamplerConfig(
        method=args.method or default_method(kernel_name), steps=args.steps if steps is None else steps,
        seq_len=args.seq_len or default_seq_len, strides=args.strides, top_k=args.top_k, top_p=args.top_p,
        rho=args.rho, freeze_threshold=args.freeze_threshold, schedule=args.schedule, remask=args.remask,
        remask_eta=args.remask_eta, corrector_steps=args.corrector_steps, corrector_frac=args.corrector_frac,
        cache=not args.no_cache,
        penalty=PenaltyConfig(lambda_freq=args.lambda_freq if lambda_freq is None else lambda_freq,
                              lambda_sem=args.lambda_sem if lambda_sem is None else lambda_sem,
                              window=args.window))


def load_association(export_config: dict, device):
    """S+ from the export's neighbour artifact (its semantic_assoc_*.npy), or None when it names none."""
    path = (export_config.get("artifacts") or {}).get("neighbors")
    if not path:
        return None
    tables = load_neighbor_tables(path)
    return association_by_columns(tables.assoc_indices.to(device), tables.assoc_weights.to(device))


def preprocessed_seq_len(export_config: dict) -> int | None:
    path = (export_config.get("artifacts") or {}).get("preprocessed")
    try:
        manifest = json.loads((Path(path) / "manifest.json").read_text()) if path else {}
    except OSError:
        return None
    return (manifest.get("config") or {}).get("seq_len")


def decode_all(records: list[dict], tokenizer_name: str | None) -> None:
    from pipeline.common.hf_assets import load_tokenizer

    tok = load_tokenizer(tokenizer_name)
    for rec in records:
        rec["text"] = tok.decode(rec["ids"], skip_special_tokens=True)


def resolve_device(device: str) -> str:
    """``cuda`` under torchrun means this rank's GPU, cuda:LOCAL_RANK."""
    local = os.environ.get("LOCAL_RANK")
    return f"cuda:{local}" if device == "cuda" and local is not None else device


def run(args) -> Path:
    from pipeline.common.export_artifact import load_export

    args.device = resolve_device(args.device)
    exported = load_export(args.model, device=args.device)
    if exported.kind != "diffusion":
        raise ValueError(f"{args.model}: kind {exported.kind!r} cannot be sampled by this stage (needs 'diffusion')")
    kernel = exported.kernel
    cfg = sampler_config(args, kernel.cfg.name, preprocessed_seq_len(exported.config) or 128)
    if cfg.seq_len > exported.model_cfg.max_seq_len:
        raise ValueError(f"--seq-len {cfg.seq_len} exceeds the model's max_seq_len {exported.model_cfg.max_seq_len}")
    if args.num_samples < 1 or args.batch_size < 1:
        raise ValueError("--num-samples and --batch-size must be >= 1")
    association = load_association(exported.config, args.device) if cfg.penalty.lambda_sem > 0 else None
    if cfg.penalty.lambda_sem > 0 and association is None:
        raise ValueError("--lambda-sem > 0 needs the export's neighbour tables (config.json artifacts.neighbors)")
    tokenizer_name = args.tokenizer or exported.tokenizer_info.get("name_or_path")
    out = Path(args.out)
    config = {"sampler": cfg.to_dict(), "num_samples": args.num_samples, "batch_size": args.batch_size,
              "seed": args.seed, "tokenizer": tokenizer_name}
    stage = StageRun(STAGE, out, config=config, upstream={"model": Path(args.model)},
                     tokenizer=exported.tokenizer_info, force=args.force)
    rank, world = dist_info()
    if stage.is_up_to_date():  # every rank sees the same manifest, so all skip together
        print(f"{out}: up to date")
        return out
    records = draw_samples(exported.model, kernel, cfg, args.num_samples, args.batch_size, args.seed,
                           association, rank, world, progress=not args.quiet)
    if world > 1:
        parts = out.parent / f".{out.name}.parts"
        write_part(parts, rank, records)
        if rank != 0:
            return out
        records = gather_parts(parts, world)
        shutil.rmtree(parts, ignore_errors=True)
    decode_all(records, tokenizer_name)
    line_cfg = cfg.to_dict()
    with stage as tmp:
        with open(tmp / "samples.jsonl", "w") as fh:
            for rec in records:
                fh.write(json.dumps({"index": rec["index"], "ids": rec["ids"], "text": rec["text"],
                                     "seed": {"run": rec["seed"], "batch": rec["batch_seed"], "row": rec["row"]},
                                     "config": line_cfg}) + "\n")
        stage.extra["stats"] = {"samples": len(records), "world_size": world,
                                "network_calls_per_batch": records[0]["network_calls"] if records else 0}
    print(f"{out}: {len(records)} samples ({cfg.method}, {cfg.steps} steps)")
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with stage_errors(PROG):
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
