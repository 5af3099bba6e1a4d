"""The kernel study: the paper's experiments (Tables 2-3, Figures 1-7) as one command, from cached artifacts.

    python -m pipeline.study SPEC --out DIR [--only table2,table3] [--dry-run] [--jobs N]
        [--slurm [--sbatch "--account=x ..."]] [--report-only]

SPEC: a YAML study spec or a preset name (configs/study/: smoke, cpu, lm1b_paper, owt_paper). Every cell
is one stage command writing one artifact under DIR; a rerun skips the cells that are done, a changed
setting reruns the cells it reaches, a killed study resumes. Writes DIR/report/ (report.md,
results.json, figures). Library: pipeline/studies/; every key and protocol choice: docs/study.md.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time

from pipeline.common.artifacts import StageError, stage_errors

PROG = "python -m pipeline.study"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("spec", help="study spec YAML, or a preset name (configs/study/*.yaml)")
    p.add_argument("--out", required=True, help="study directory (every cell's artifact, logs, report/)")
    p.add_argument("--only", default=None, help="comma-separated experiments to run (and the cells they need)")
    p.add_argument("--dry-run", action="store_true", help="print the plan: cells, what is cached, projected cost")
    p.add_argument("--jobs", type=int, default=1, help="cells run at once (locally)")
    p.add_argument("--threads", type=int, default=None, help="OMP threads per cell (default: cores / jobs)")
    p.add_argument("--slurm", action="store_true", help="submit each cell as a SLURM job chained by dependencies")
    p.add_argument("--sbatch", default="", help="sbatch options for every job (with --slurm)")
    p.add_argument("--report-only", action="store_true", help="write the report from what is there, run nothing")
    p.add_argument("--python", default=sys.executable, help="interpreter the cells run under")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = " ".join([PROG, *map(shlex.quote, argv if argv is not None else sys.argv[1:])])
    with stage_errors(PROG):
        from pathlib import Path

        from pipeline.studies.plan import build_plan
        from pipeline.studies.report import write_study_report
        from pipeline.studies.runner import run_local, select
        from pipeline.studies.spec import EXPERIMENTS, load_spec

        if args.jobs < 1:
            raise StageError(f"--jobs must be >= 1, got {args.jobs}")
        spec = load_spec(args.spec)
        plan = build_plan(spec, Path(args.out), python=args.python)
        only = None
        if args.only:
            only = {x.strip() for x in args.only.split(",") if x.strip()}
            known = set(plan.runs) | {"report"} | set(EXPERIMENTS)
            if only - known:
                raise StageError(f"--only: unknown experiment(s) {', '.join(sorted(only - known))} "
                                 f"(this spec has: {', '.join(sorted(set(plan.runs) - {'judge'}))})")
        cells = select(plan, only)
        if args.dry_run:
            from pipeline.studies.dry_run import print_plan

            print_plan(plan, cells)
            return 0
        if args.report_only:
            print(f"report: {write_study_report(plan, command) / 'report.md'}")
            return 0
        if args.slurm:
            from pipeline.studies.slurm import submit_plan

            submit_plan(plan, cells, command, shlex.split(args.sbatch))
            return 0
        start = time.time()
        failed = run_local(plan, cells, jobs=args.jobs, threads=args.threads)
        report = write_study_report(plan, command, time.time() - start)
        print(f"report: {report / 'report.md'}")
        if failed:
            raise StageError(f"{len(failed)} cell(s) failed: {', '.join(failed)} (logs in {plan.out / 'logs'}; "
                             "rerun the same command to retry them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
