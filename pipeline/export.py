"""Export a trained model for sampling and evaluation without DeepSpeed.

    python -m pipeline.export RUN_DIR --out DIR [--tag global_stepN] [--raw-weights]

reads the newest checkpoint of RUN_DIR (or ``--tag``) straight from its files: no DeepSpeed engine,
one process, any world size the run was trained on. Library: ``pipeline.training.export``
(writing) and ``pipeline.common.export_artifact`` (the artifact, read by sampling and evaluation).
"""
from __future__ import annotations

import argparse
import sys

from pipeline.common.artifacts import stage_errors
from pipeline.common.locks import add_break_lock_argument

PROG = "python -m pipeline.export"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Export a training run's weights for sampling.")
    p.add_argument("run_dir", help="training run directory (holds checkpoints/ and train_config.json)")
    p.add_argument("--out", required=True, help="export directory to write")
    p.add_argument("--tag", default=None, help="checkpoint tag (default: the latest, e.g. global_step1000)")
    p.add_argument("--raw-weights", action="store_true", help="export the raw weights instead of the EMA")
    p.add_argument("--force", action="store_true", help="overwrite an existing export")
    add_break_lock_argument(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with stage_errors(PROG):
        from pipeline.training.export import export_run

        out = export_run(args.run_dir, args.out, tag=args.tag, use_ema=not args.raw_weights, force=args.force,
                         break_lock=args.break_lock)
    print(f"{out}: written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
