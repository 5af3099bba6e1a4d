"""Evaluate an export: test NELBO / PPL, and samples (Gen-PPL under a judge, entropy, diversity).

    python -m pipeline.evaluate --model EXPORT_DIR --out DIR
        [--judge gpt2-large | HF_DIR | AR_EXPORT_DIR | none] [--judge-batch-size 8]
        [--no-nelbo] [--test-split DIR] [--max-test-sequences N] [--t-draws 4]
        [--bound continuous|tstep] [--nelbo-steps 1000] [--baseline AR_EXPORT] [--no-frequency-floor]
        [--eval-set NAME=SOURCE[#detok=lm1b|ptb|wikitext|lambada|none][#field=F] ...]
        [--samples SAMPLE_DIR | --steps 32,64,128,256 --lambda-freq 0,1 --lambda-sem 0,0.5 ...]

SOURCE: a preprocess split directory, a raw text (any name: .txt, wiki.test.raw, ...) or .jsonl file,
optionally .gz (tokenised like the training data), or hf:ID[:CONFIG][@SPLIT] (default split test);
one zero-shot table row and one results.json ``eval_sets`` entry per set.
Every split and set is scored whole unless --max-test-sequences cuts it.

Writes DIR/results.json, DIR/report.md, DIR/sweep.csv, PNG plots (entropy histogram; Gen-PPL and
entropy against steps when more than one step count is swept) and the samples of every sweep point
under DIR/samples/. Sampling options are those of ``python -m pipeline.sample``.
Library: pipeline/evaluation/stage.py (EvaluateConfig, run_evaluate).
"""
from __future__ import annotations

import argparse
import sys

from pipeline.common.artifacts import stage_errors
from pipeline.common.cpu_host import keep_freed_memory_on_cpu
from pipeline.evaluation.genppl import DEFAULT_JUDGE
from pipeline.evaluation.stage import EvaluateConfig, run_evaluate
from pipeline.sampling.cli_args import add_sampler_args, sampler_kwargs

PROG = "python -m pipeline.evaluate"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="export directory (diffusion or ar)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--judge", default=DEFAULT_JUDGE,
                   help="Gen-PPL judge: HF causal LM id/dir, an AR export of this pipeline, or 'none'")
    p.add_argument("--judge-batch-size", type=int, default=8)
    p.add_argument("--no-nelbo", action="store_true", help="skip the test NELBO")
    p.add_argument("--test-split", default=None, help="MDS test split (default: PREPROCESSED/test of the export)")
    p.add_argument("--max-test-sequences", type=int, default=None,
                   help="score only the first N sequences of the test split and of every eval set (default: all)")
    p.add_argument("--eval-set", action="append", default=[], metavar="NAME=SOURCE[#detok=D][#field=F]",
                   help="a held-out set (repeatable): a preprocess split dir, a text (any name) or .jsonl file "
                        "or hf:ID[:CONFIG][@SPLIT] (default split test); detokeniser D in "
                        "lm1b|ptb|wikitext|lambada|none (default: by NAME, else none); see docs/sampling.md")
    p.add_argument("--eval-batch-size", type=int, default=16)
    p.add_argument("--t-draws", type=int, default=4, help="t draws (or bound steps) per test sequence")
    p.add_argument("--bound", default="continuous", choices=("continuous", "tstep"),
                   help="continuous: the kernel's tightest continuous-time bound (default); tstep: the T-step bound")
    p.add_argument("--nelbo-steps", type=int, default=1000, help="T of the T-step bound (--bound tstep)")
    p.add_argument("--t-sampling", default="defensive", choices=("defensive", "uniform"),
                   help="t of the continuous bounds: defensive importance sampling (default: finite variance also "
                        "for integrands ~1/t) or uniform (docs/likelihood.md Sec 7)")
    p.add_argument("--nelbo-seed", type=int, default=0)
    p.add_argument("--baseline", default=None, metavar="EXPORT",
                   help="another export (e.g. the AR baseline) scored on the same test sequences with the same "
                        "protocol: the report gives both bounds and their paired difference")
    p.add_argument("--no-frequency-floor", action="store_true",
                   help="skip the frequency floor: the kernel's bound for a denoiser that knows only token "
                        "frequencies, on the same draws (the bound's slack at zero context; not for mask)")
    p.add_argument("--samples", default=None, help="evaluate this sample directory instead of sampling")
    p.add_argument("--no-samples", action="store_true", help="likelihood only")
    add_sampler_args(p, grid=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with stage_errors(PROG):
        cfg = EvaluateConfig(
            judge=args.judge, judge_batch_size=args.judge_batch_size, nelbo=not args.no_nelbo,
            test_split=args.test_split, max_test_sequences=args.max_test_sequences,
            eval_batch_size=args.eval_batch_size, eval_sets=tuple(args.eval_set), t_draws=args.t_draws,
            nelbo_steps=args.nelbo_steps, bound=args.bound, t_sampling=args.t_sampling,
            nelbo_seed=args.nelbo_seed, baseline=args.baseline, frequency_floor=not args.no_frequency_floor,
            samples=args.samples, sample=not args.no_samples,
            **sampler_kwargs(args))
        keep_freed_memory_on_cpu(cfg.device)  # no caching allocator on CPU (pipeline/common/cpu_host.py)
        run_evaluate(cfg, args.model, args.out, force=args.force, break_lock=args.break_lock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
