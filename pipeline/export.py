"""Export a trained model for sampling, evaluation and transformers, without DeepSpeed.

    python -m pipeline.export RUN_DIR --out DIR [--tag global_stepN] [--raw-weights] [--tokenizer PATH]
                              [--eval EVAL_DIR] [--push-to-hub REPO [--private]]

reads the newest checkpoint of RUN_DIR (or ``--tag``) straight from its files: no DeepSpeed engine,
one process, any world size the run was trained on. The directory is the pipeline's export artifact
and a transformers model (``AutoModelForMaskedLM`` / ``AutoModelForCausalLM`` with
``trust_remote_code=True``) with its tokenizer and a model card (README.md; ``--eval`` adds the test
bounds of an evaluation of the same weights). Exporting the same checkpoint file with the same options
again is up to date (the directory is kept); a stale export of the same run is rewritten; a directory
holding anything else needs ``--force``.
Library: ``pipeline.training.export`` (writing), ``pipeline.common.export_artifact`` (the artifact, read
by sampling and evaluation) and ``pipeline.common.hf_export`` (the transformers side, the Hub).
"""
from __future__ import annotations

import argparse
import sys

from pipeline.common.artifacts import stage_errors
from pipeline.common.locks import add_break_lock_argument

PROG = "python -m pipeline.export"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Export a training run's weights for sampling and transformers.")
    p.add_argument("run_dir", help="training run directory (holds checkpoints/ and train_config.json)")
    p.add_argument("--out", required=True, help="export directory to write")
    p.add_argument("--tag", default=None, help="checkpoint tag (default: the latest, e.g. global_step1000)")
    p.add_argument("--raw-weights", action="store_true", help="export the raw weights instead of the EMA")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer to ship (default: the run's; must have the run's vocabulary)")
    p.add_argument("--eval", default=None, metavar="EVAL_DIR",
                   help="evaluation artifact of these weights (python -m pipeline.evaluate): its test bounds go on "
                        "the model card")
    p.add_argument("--push-to-hub", default=None, metavar="REPO",
                   help="then upload the export to this Hugging Face model repo (needs network and a token)")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    p.add_argument("--force", action="store_true",
                   help="overwrite OUT even if it holds another run's export or no export")
    add_break_lock_argument(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with stage_errors(PROG):
        from pipeline.common.hf_export import check_hub_online, push_to_hub
        from pipeline.training.export import export_run

        if args.push_to_hub:
            check_hub_online(args.push_to_hub)  # offline: stop before any work
        out, written = export_run(args.run_dir, args.out, tag=args.tag, use_ema=not args.raw_weights,
                                  force=args.force, break_lock=args.break_lock, tokenizer=args.tokenizer,
                                  evaluation=args.eval)
        print(f"{out}: {'written' if written else 'up to date'}")
        if args.push_to_hub:
            print(f"{out}: pushed to {push_to_hub(out, args.push_to_hub, private=args.private)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
