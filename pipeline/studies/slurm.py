"""``--slurm``: every cell of a study that is not done becomes one SLURM job, chained by its dependencies.

Train cells go through slurm/train.sh (requeued at the time limit, resumed from the run's last
checkpoint), every other cell through slurm/cell.sh. A job stamps its cell once its stage has
succeeded (python -m pipeline.studies.stamp), exactly as a local run does, so a later local run,
--dry-run or --slurm sees the cell cached. A job waits for the jobs of its dependencies (afterok)
and is cancelled when one fails (--kill-on-invalid-dep=yes); a last job writes the report once
every other job has ended (afterany). Jobs run in the directory the study was submitted from, like
local cells; their logs go where a local run writes them (DIR/logs/<cell>.log).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from pipeline.common.artifacts import StageError
from pipeline.common.locks import DirectoryLock

from .plan import DS_CONFIG, Cell, Plan
from .runner import is_done, log_path
from .stamp import submitted_file

SCRIPTS = Path(__file__).resolve().parents[2] / "slurm"
TRAIN_SCRIPT, CELL_SCRIPT = SCRIPTS / "train.sh", SCRIPTS / "cell.sh"
# train.sh splits EXTRA_ARGS at whitespace and expands globs: a setting holding either would change meaning
UNSAFE = set(" \t\n*?[")


def kind_options(kind: str, gpus: int) -> list[str]:
    """sbatch options of one kind of cell (the script's #SBATCH lines are the defaults; --sbatch wins)."""
    if kind == "train":  # one node, one rank per GPU; on a CPU cluster one rank, as a local run
        # runs may share a node: a starting run removes only dead runs' shared memory (training/shared_memory.py)
        # and registers its datasets one at a time with the node's other jobs (common/shm_registration.py)
        return ["--nodes=1", f"--gpus-per-node={gpus}", f"--ntasks-per-node={max(gpus, 1)}"]
    if kind in ("preprocess", "export"):  # tokenising and reading a checkpoint need no GPU
        return ["--gpus-per-node=0"]
    return [f"--gpus-per-node={min(gpus, 1)}"]


def train_env(cell: Cell) -> dict[str, str]:
    """slurm/train.sh's variables for a train cell: the same command as the cell's argv."""
    t = cell.train
    extra = ["--max-steps", str(t.steps), *t.settings]
    bad = [a for a in extra if not a or UNSAFE & set(a)]
    if bad:
        raise StageError(f"{cell.name}: setting {bad[0]!r} cannot pass through slurm/train.sh's EXTRA_ARGS "
                         "(split at spaces, globs expanded)")
    return {"CONFIG": t.config, "DS_CONFIG": DS_CONFIG, "DATA": str(t.data), "RUN_DIR": str(t.run_dir),
            "NEIGHBORS": str(t.neighbors) if t.neighbors is not None else "", "KERNEL": t.kernel or "",
            "EXTRA_ARGS": " ".join(extra), "PYTHON": cell.argv[0]}


def cell_job(plan: Plan, cell: Cell, dep_ids: list[str], sbatch_options: list[str]) -> tuple[list[str], dict]:
    """The sbatch command line (after ``sbatch``) and the extra environment of one cell's job."""
    opts = [f"--job-name={plan.spec.name}:{cell.name}", f"--output={log_path(plan, cell)}", "--open-mode=append",
            *kind_options(cell.kind, plan.spec.train.gpus)]
    if dep_ids:
        opts += [f"--dependency=afterok:{':'.join(dep_ids)}", "--kill-on-invalid-dep=yes"]
    env = {"STUDY_DIR": str(plan.out), "STUDY_CELL": cell.name}
    if cell.kind == "train":
        return [*opts, *sbatch_options, str(TRAIN_SCRIPT)], {**env, **train_env(cell)}
    return [*opts, *sbatch_options, str(CELL_SCRIPT), *cell.argv], {**env, "PYTHON": cell.argv[0]}


def report_job(plan: Plan, python: str, dep_ids: list[str], sbatch_options: list[str]) -> list[str]:
    """The report: once every submitted job has ended, however it ended (it reports what is there)."""
    if not plan.spec.source:
        raise StageError("--slurm needs the study spec's file (the report job reads it)")
    opts = [f"--job-name={plan.spec.name}:report", f"--output={plan.out / 'logs' / 'report.log'}",
            "--open-mode=append", "--gpus-per-node=0", "--cpus-per-task=1", "--mem=8G", "--time=01:00:00"]
    if dep_ids:
        opts.append(f"--dependency=afterany:{':'.join(dep_ids)}")
    return [*opts, *sbatch_options, str(CELL_SCRIPT), python, "-m", "pipeline.study", plan.spec.source,
            "--out", str(plan.out), "--report-only", "--python", python]


def submit_plan(plan: Plan, cells: list[Cell], command: str, sbatch_options: list[str],
                log=print) -> dict[str, str]:
    """Submit ``cells`` that are not done (in plan order) and the report job; job id by cell name
    (and "report"). A failed sbatch cancels the jobs submitted before it."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise StageError("sbatch not found: run --slurm on a SLURM login node")
    for script in (TRAIN_SCRIPT, CELL_SCRIPT):
        if not script.is_file():
            raise StageError(f"{script} not found: --slurm submits the scripts of a repository checkout")
    todo = [c for c in cells if not is_done(plan, c)]
    log(f"study {plan.spec.name}: {len(cells)} cells, {len(cells) - len(todo)} already done, "
        f"{len(todo)} to submit; logs in {plan.out / 'logs'}")
    (plan.out / "logs").mkdir(parents=True, exist_ok=True)
    python = cells[0].argv[0] if cells else "python"
    jobs: dict[str, str] = {}
    # not while a local run of this study holds it (its cells would run twice)
    with DirectoryLock(plan.out / ".study" / "lock", "study"):
        try:
            for cell in todo:
                record = submitted_file(plan.out, cell.name)
                record.parent.mkdir(parents=True, exist_ok=True)
                # before sbatch: the job may start (and stamp) at once
                record.write_text(json.dumps({"key": cell.key, "argv": cell.argv, "command": command}, indent=1))
                options, env = cell_job(plan, cell, [jobs[d] for d in cell.deps if d in jobs], sbatch_options)
                jobs[cell.name] = _sbatch([sbatch, *options], env, cell.name)
                log(f"{cell.name}: job {jobs[cell.name]}")
            jobs["report"] = _sbatch([sbatch, *report_job(plan, python, list(jobs.values()), sbatch_options)], {},
                                     "report")
        except BaseException as exc:
            _cancel(list(jobs.values()))
            if jobs and isinstance(exc, StageError):
                raise StageError(f"{exc} (cancelled the {len(jobs)} job(s) submitted before it)") from None
            raise
    log(f"report: job {jobs['report']} (writes {plan.out / 'report' / 'report.md'} once every job has ended; "
        "squeue --me)")
    return jobs


def _sbatch(argv: list[str], env: dict[str, str], what: str) -> str:
    proc = subprocess.run([argv[0], "--parsable", *argv[1:]], env={**os.environ, **env}, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=120)
    if proc.returncode != 0:
        reason = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise StageError(f"sbatch of {what} failed: {reason[0]}")
    return proc.stdout.strip().split(";")[0]


def _cancel(job_ids: list[str]) -> None:
    """Cancel the jobs this submission made (the study's other jobs, if any, are left alone)."""
    scancel = shutil.which("scancel")
    if job_ids and scancel:
        subprocess.run([scancel, *job_ids], capture_output=True, stdin=subprocess.DEVNULL, timeout=60)
