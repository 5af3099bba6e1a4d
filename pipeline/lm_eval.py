"""lm-evaluation-harness on an export of this pipeline (``pip install 'semdlm[eval]'``).

    python -m pipeline.lm_eval --model-dir EXPORT --tasks hellaswag,arc_easy [--t-draws 16] [--seed 0]
        [--lm-batch-size 16] [--steps 64] [--max-gen-toks 64] [--device cpu] [lm-eval's own options ...]

registers the ``semdlm`` model with lm-eval (pipeline/evaluation/lm_eval_model.py: loglikelihood,
loglikelihood_rolling, generate_until) and runs lm-eval's CLI (``lm-eval run --model semdlm
--model_args model_dir=EXPORT,...``) with every other option passed through: ``--tasks``,
``--num_fewshot``, ``--limit``, ``--output_path``, ``--include_path`` (local task YAMLs), ... Its
results table is lm-eval's. docs/evaluation.md shows the usual zero-shot tasks (online) and local tasks.
"""
from __future__ import annotations

import argparse
import sys

PROG = "python -m pipeline.lm_eval"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                epilog="Every other option goes to lm-eval's CLI (lm-eval run --help).")
    p.add_argument("--model-dir", required=True, help="export directory (python -m pipeline.export)")
    p.add_argument("--t-draws", type=int, default=16,
                   help="diffusion: stratified t draws per bound (Monte Carlo, seeded by --seed; default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bound's draws and of the sampler")
    p.add_argument("--lm-batch-size", type=int, default=16, help="sequences per forward in the bound")
    p.add_argument("--steps", type=int, default=64, help="generate_until: sampler steps per window (diffusion)")
    p.add_argument("--max-gen-toks", type=int, default=64, help="generate_until: tokens when a task names none")
    p.add_argument("--device", default="cpu", help="torch device")
    return p


def main(argv: list[str] | None = None) -> int:
    args, rest = build_parser().parse_known_args(argv)
    try:
        from lm_eval.__main__ import cli_evaluate

        import pipeline.evaluation.lm_eval_model  # noqa: F401  (registers the semdlm model)
    except ImportError as exc:
        print(f"{PROG}: error: lm-evaluation-harness is not installed ({exc}): pip install 'semdlm[eval]'",
              file=sys.stderr)
        return 2
    if {"--model", "--model_args", "--batch_size", "--device"} & set(rest):
        print(f"{PROG}: error: --model, --model_args, --batch_size and --device are set by this command "
              "(--model-dir, --lm-batch-size, --device)", file=sys.stderr)
        return 2
    model_args = (f"model_dir={args.model_dir},t_draws={args.t_draws},seed={args.seed},steps={args.steps},"
                  f"max_gen_toks={args.max_gen_toks}")
    saved = sys.argv
    sys.argv = ["lm-eval", "run", "--model", "semdlm", "--model_args", model_args, "--device", args.device,
                "--batch_size", str(args.lm_batch_size), *rest]
    try:
        cli_evaluate()
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    finally:
        sys.argv = saved
    return 0


if __name__ == "__main__":
    sys.exit(main())
