"""Train a diffusion language model with DeepSpeed.

    deepspeed pipeline/train.py --ds_config ds_configs/zero2.json --config configs/lm1b_small.yaml \\
        --run-dir runs/lm1b --preprocessed data/lm1b --neighbors data/lm1b_nn [--kernel semdlm_plus] \\
        [--max-steps N] [key=value ...]
    python -m pipeline.train ...            # one process, same flags (also: python pipeline/train.py)

The data: ``--preprocessed DIR`` (one local artifact) or ``data.streams`` in the config (several
artifacts, local or on any storage mosaicml-streaming reads, mixed by weight; docs/training.md, Data).

A run directory that holds a checkpoint resumes automatically (a changed model/kernel config is
refused). ``--universal`` resumes from a universal checkpoint on another world size (docs/training.md).
Rank 0 holds the run directory's lock (RUN_DIR/.lock) for the whole run: a second job on the same
directory exits with status 2 naming the holder; ``--break-lock`` takes it over. A collective that
waits longer than ``dist_timeout_s`` (a lost node or rank) ends the rank with one line and status 4.
Library: pipeline/training/launch.py (train, build_trainer), pipeline/training/config.py (TrainConfig).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (deepspeed pipeline/train.py): make `pipeline` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.common.artifacts import stage_errors  # noqa: E402
from pipeline.common.locks import add_break_lock_argument  # noqa: E402
from pipeline.training.launch import train  # noqa: E402

PROG = "pipeline/train.py"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Train a (semantic) diffusion LM with DeepSpeed.")
    p.add_argument("--ds_config", "--ds-config", dest="ds_config", default="ds_configs/zero2.json",
                   help="DeepSpeed JSON (ZeRO stage etc.); batch, clipping, precision come from --config")
    p.add_argument("--config", default=None, help="TrainConfig YAML (configs/*.yaml)")
    p.add_argument("--run-dir", default=None, help="run directory: checkpoints, TensorBoard, metrics")
    p.add_argument("--preprocessed", default=None,
                   help="preprocess artifact directory (several, or remote ones: data.streams in the config)")
    p.add_argument("--neighbors", default=None, help="neighbor_index artifact directory (semdlm kernels)")
    p.add_argument("--kernel", default=None, help="kernel preset (mask, uniform, semdlm, semdlm_softmax, semdlm_plus)")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps to train to")
    p.add_argument("--universal", action="store_true",
                   help="resume from RUN_DIR/checkpoints/latest_universal (another world size)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help="set by the deepspeed launcher")
    add_break_lock_argument(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="TrainConfig overrides (yaml values)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with stage_errors(PROG):
        from pipeline.training.config import load_config
        from pipeline.training.distributed import launcher_rank, lost_peer
        from pipeline.training.loop import NonFiniteAbort

        cfg = load_config(args.config, args.overrides, run_dir=args.run_dir, preprocessed=args.preprocessed,
                          neighbors=args.neighbors, kernel=args.kernel, max_steps=args.max_steps)
        try:
            return train(cfg, args.ds_config, local_rank=args.local_rank, universal=args.universal,
                         break_lock=args.break_lock)
        except NonFiniteAbort as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 3
        except Exception as exc:
            if not lost_peer(exc):
                raise
            detail = str(exc).strip().splitlines()[-1][:300]
            print(f"{PROG}: error: rank {launcher_rank()}: a collective lost its peers (no answer within "
                  f"dist_timeout_s={cfg.dist_timeout_s:g} s, or a peer's connection dropped): another rank or "
                  f"node is gone; resume from the last checkpoint ({detail})", file=sys.stderr)
            return 4


if __name__ == "__main__":
    sys.exit(main())
