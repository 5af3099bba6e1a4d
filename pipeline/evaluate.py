"""Evaluate an export: test NELBO / PPL, and samples (Gen-PPL under a judge, entropy, diversity).

    python -m pipeline.evaluate --model EXPORT_DIR --out DIR
        [--judge gpt2-large | HF_DIR | AR_EXPORT_DIR | none] [--judge-batch-size 8]
        [--no-nelbo] [--test-split DIR] [--max-test-sequences 256] [--t-draws 4] [--nelbo-steps 1000]
        [--samples SAMPLE_DIR | --steps 32,64,128,256 --lambda-freq 0,1 --lambda-sem 0,0.5 ...]

writes DIR/results.json, DIR/report.md, DIR/sweep.csv, PNG plots (entropy histogram; Gen-PPL and
entropy against steps when more than one step count is swept) and the samples of every sweep point
under DIR/samples/. Sampling options are those of ``python -m pipeline.sample``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

from pipeline.common.artifacts import StageRun, stage_errors
from pipeline.evaluation.diversity import sample_metrics
from pipeline.evaluation.genppl import DEFAULT_JUDGE, generative_perplexity, load_judge
from pipeline.evaluation.nelbo import evaluate_nelbo, read_test_sequences
from pipeline.evaluation.report import plot_entropy_histogram, plot_sweep, write_report, write_sweep_csv
from pipeline.sample import add_sampler_args, decode_all, load_association, preprocessed_seq_len, sampler_config
from pipeline.sampling.runner import draw_samples

PROG = "python -m pipeline.evaluate"
STAGE = "evaluate"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="export directory (diffusion or ar)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--judge", default=DEFAULT_JUDGE,
                   help="Gen-PPL judge: HF causal LM id/dir, an AR export of this pipeline, or 'none'")
    p.add_argument("--judge-batch-size", type=int, default=8)
    p.add_argument("--no-nelbo", action="store_true", help="skip the test NELBO")
    p.add_argument("--test-split", default=None, help="MDS test split (default: PREPROCESSED/test of the export)")
    p.add_argument("--max-test-sequences", type=int, default=256)
    p.add_argument("--eval-batch-size", type=int, default=16)
    p.add_argument("--t-draws", type=int, default=4, help="t draws (or bound steps) per test sequence")
    p.add_argument("--nelbo-steps", type=int, default=1000, help="T of the discrete bound (semantic kernels)")
    p.add_argument("--nelbo-seed", type=int, default=0)
    p.add_argument("--samples", default=None, help="evaluate this sample directory instead of sampling")
    p.add_argument("--no-samples", action="store_true", help="likelihood only")
    add_sampler_args(p, grid=True)
    return p


def read_samples(directory: Path) -> list[dict]:
    from pipeline.common.artifacts import load_manifest

    load_manifest(directory, stage="sample")
    return [json.loads(line) for line in (directory / "samples.jsonl").read_text().splitlines() if line]


def evaluate_point(records: list[dict], judge, neighbors, args) -> dict:
    """Metrics of one set of samples."""
    ids = [r["ids"] for r in records]
    row = sample_metrics(ids, neighbors, window=args.window)
    if judge is not None:
        g = generative_perplexity([r["text"] for r in records], judge, args.judge_batch_size)
        row.update(gen_ppl=g["gen_ppl"], judge_tokens=g["judge_tokens"], per_sample_ppl=g["per_sample_ppl"])
    return row


def run(args) -> Path:
    from pipeline.common.export_artifact import load_export

    exported = load_export(args.model, device=args.device)
    artifacts = exported.config.get("artifacts") or {}
    out = Path(args.out)
    config = {k: v for k, v in vars(args).items() if k not in ("force", "quiet", "out")}
    stage = StageRun(STAGE, out, config=config, upstream={"model": Path(args.model)},
                     tokenizer=exported.tokenizer_info, force=args.force)
    if stage.is_up_to_date():
        print(f"{out}: up to date")
        return out
    judge = None if args.judge in ("none", "") or exported.kind != "diffusion" or args.no_samples \
        else load_judge(args.judge, args.device)
    results = {"model": str(Path(args.model).resolve()), "kind": exported.kind,
               "kernel": exported.kernel.cfg.name if exported.kernel is not None else None,
               "judge": judge.name if judge else None, "training": exported.config.get("training")}
    if not args.no_nelbo:
        split = args.test_split or (Path(artifacts["preprocessed"]) / "test" if artifacts.get("preprocessed") else None)
        if split is None:
            raise ValueError("no test split: pass --test-split or --no-nelbo (the export names no preprocessed data)")
        seqs = read_test_sequences(split, args.max_test_sequences)
        pad_id = exported.tokenizer_info.get("special_ids", {}).get("pad")
        results["nelbo"] = evaluate_nelbo(exported, seqs, pad_id, args.eval_batch_size, args.t_draws,
                                          args.nelbo_steps, args.nelbo_seed, progress=not args.quiet)
    tables = None
    if artifacts.get("neighbors"):
        from pipeline.common.neighbor_artifact import load_neighbor_tables

        tables = load_neighbor_tables(artifacts["neighbors"])
    neighbors = tables.neighbors if tables is not None else None
    rows, point_samples = [], {}
    if exported.kind == "diffusion" and not args.no_samples:
        if args.samples:
            records = read_samples(Path(args.samples))
            cfg = records[0]["config"] if records else {}
            penalty = cfg.get("penalty", {})
            rows.append({"steps": cfg.get("steps"), "lambda_freq": penalty.get("lambda_freq", 0.0),
                         "lambda_sem": penalty.get("lambda_sem", 0.0), "num_samples": len(records),
                         **evaluate_point(records, judge, neighbors, args)})
            point_samples["given"] = records
        else:
            seq_len = preprocessed_seq_len(exported.config) or 128
            needs_sem = any(ls > 0 for ls in args.lambda_sem)
            association = load_association(exported.config, args.device) if needs_sem else None
            for steps, lf, ls in itertools.product(args.steps, args.lambda_freq, args.lambda_sem):
                cfg = sampler_config(args, exported.kernel.cfg.name, seq_len, steps, lf, ls)
                if ls > 0 and association is None:
                    raise ValueError("--lambda-sem > 0 needs the export's neighbour tables")
                start = time.time()
                records = draw_samples(exported.model, exported.kernel, cfg, args.num_samples, args.batch_size,
                                       args.seed, association, progress=not args.quiet)
                decode_all(records, args.tokenizer or exported.tokenizer_info.get("name_or_path"))
                row = {"steps": steps, "lambda_freq": lf, "lambda_sem": ls, "num_samples": len(records),
                       "method": cfg.method, "seconds": round(time.time() - start, 2)}
                row.update(evaluate_point(records, judge, neighbors, args))
                rows.append(row)
                point_samples[f"steps{steps}_lf{lf:g}_ls{ls:g}"] = records
                print(f"steps={steps} lambda_freq={lf:g} lambda_sem={ls:g}: gen_ppl={row.get('gen_ppl')} "
                      f"entropy={row['entropy_mean']:.3f}")
    with stage as tmp:
        plots = []
        if rows:
            write_sweep_csv(rows, tmp / "sweep.csv")
            plot_entropy_histogram(rows[0]["entropy_per_sample"], tmp / "entropy_hist.png")
            plots.append("entropy_hist.png")
            if len({r["steps"] for r in rows}) > 1:
                plot_sweep(rows, tmp / "sweep_steps.png")
                plots.append("sweep_steps.png")
            (tmp / "samples").mkdir()
            for name, records in point_samples.items():
                with open(tmp / "samples" / f"{name}.jsonl", "w") as fh:
                    fh.writelines(json.dumps({k: r[k] for k in ("index", "ids", "text") if k in r}) + "\n"
                                  for r in records)
        results["sweep"] = rows
        results["plots"] = plots
        first = next(iter(point_samples.values()), [])
        results["examples"] = [r["text"] for r in first[:3]]
        results["max_sample_len"] = max((len(r["ids"]) for recs in point_samples.values() for r in recs), default=0)
        write_report(tmp, results)
    print(f"{out}: report at {out / 'report.md'}")
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with stage_errors(PROG):
        run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
