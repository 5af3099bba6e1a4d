"""Run a plan's cells locally, in dependency order, N at a time, skipping what is already done.

A cell is done when ``OUT/.study/cells/<cell>.json`` holds its current key (plan.py) and its output exists:
written only after the stage exited 0, so a killed study reruns the cells that were running (their
stages resume: training from its last checkpoint, every other stage rewrites its artifact atomically).
A failed cell stops the cells that need it; the others go on, and the study exits non-zero naming it.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from pipeline.common.locks import DirectoryLock

from .plan import Cell, Plan


def stamp_file(out: Path, name: str) -> Path:
    return Path(out) / ".study" / "cells" / (name.replace("/", "__") + ".json")


def stamp_path(plan: Plan, cell: Cell) -> Path:
    return stamp_file(plan.out, cell.name)


def log_path(plan: Plan, cell: Cell) -> Path:
    return plan.out / "logs" / (cell.name.replace("/", "__") + ".log")


def is_done(plan: Plan, cell: Cell) -> bool:
    stamp = stamp_path(plan, cell)
    if not (stamp.is_file() and cell.out.exists()):
        return False
    try:
        return json.loads(stamp.read_text()).get("key") == cell.key
    except (OSError, ValueError):
        return False


def write_stamp(out: Path, name: str, key: str, argv: list[str], seconds: float) -> None:
    """Mark cell ``name`` of the study under ``out`` done with ``key`` (the one writer: local runs and SLURM jobs)."""
    stamp = stamp_file(out, name)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    tmp = stamp.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "argv": argv, "seconds": round(seconds, 1),
                               "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=1))
    os.replace(tmp, stamp)


def select(plan: Plan, only: set[str] | None) -> list[Cell]:
    """The cells ``only``'s experiments need (all when None), with every dependency they have."""
    if not only:
        return plan.ordered()
    wanted = {c.name for c in plan.ordered() if c.experiments & only}
    for cell in reversed(plan.ordered()):
        if cell.name in wanted:
            wanted.update(cell.deps)
    return [c for c in plan.ordered() if c.name in wanted]


def run_local(plan: Plan, cells: list[Cell], jobs: int = 1, threads: int | None = None, log=print) -> list[str]:
    """Run ``cells`` (skipping done ones), ``jobs`` at a time; the names of the cells that failed."""
    plan.out.mkdir(parents=True, exist_ok=True)
    with DirectoryLock(plan.out / ".study" / "lock", "study"):
        return _Scheduler(plan, cells, jobs, threads, log).run()


class _Scheduler:
    """Starts ready cells up to ``jobs`` at a time, reaps them, stamps the ones that succeeded."""

    def __init__(self, plan: Plan, cells: list[Cell], jobs: int, threads: int | None, log):
        self.plan, self.jobs, self.log = plan, jobs, log
        self.pending = [c for c in cells if not is_done(plan, c)]
        names = {c.name for c in cells}
        # done: the cached cells, and the dependencies left out of this selection (--only picks the rest)
        self.done = {c.name for c in cells if c not in self.pending} | {d for c in cells for d in c.deps
                                                                        if d not in names}
        self.failed: list[str] = []
        self.blocked: set[str] = set()
        self.running: dict[str, tuple[subprocess.Popen, float, object]] = {}
        self.env = dict(os.environ, OMP_NUM_THREADS=str(threads or max(1, (os.cpu_count() or 1) // jobs)))
        self.finished = 0
        log(f"study {plan.spec.name}: {len(cells)} cells, {len(cells) - len(self.pending)} already done, "
            f"{len(self.pending)} to run ({jobs} at a time); logs in {plan.out / 'logs'}")

    def run(self) -> list[str]:
        try:
            while self.pending or self.running:
                self._start_ready()
                time.sleep(0.2)
                self._reap()
        except BaseException:  # Ctrl-C, SIGTERM (SystemExit under the study's lock), a bug
            self._stop()
            raise
        return self.failed

    def _start_ready(self) -> None:
        for cell in list(self.pending):
            if len(self.running) >= self.jobs:
                return
            if any(d in self.blocked or d in self.failed for d in cell.deps):
                self.pending.remove(cell)
                self.blocked.add(cell.name)
                self.log(f"  skip {cell.name}: a cell it needs failed")
            elif all(d in self.done for d in cell.deps):
                self.pending.remove(cell)
                path = log_path(self.plan, cell)
                path.parent.mkdir(parents=True, exist_ok=True)
                fh = open(path, "a")
                fh.write(f"\n$ {' '.join(cell.argv)}\n")
                fh.flush()
                proc = subprocess.Popen(cell.argv, stdout=fh, stderr=subprocess.STDOUT, env=self.env)
                self.running[cell.name] = (proc, time.time(), fh)
                self.log(f"  start {cell.name}")

    def _reap(self) -> None:
        for name, (proc, start, fh) in list(self.running.items()):
            if proc.poll() is None:
                continue
            fh.close()
            del self.running[name]
            cell, seconds = self.plan.cells[name], time.time() - start
            self.finished += 1
            if proc.returncode == 0:
                write_stamp(self.plan.out, name, cell.key, cell.argv, seconds)
                self.done.add(name)
                self.log(f"  [{self.finished}] done {name} ({seconds:.0f} s)")
            else:
                self.failed.append(name)
                path = log_path(self.plan, cell)
                tail = path.read_text().strip().splitlines()[-1:] or [""]
                self.log(f"  [{self.finished}] FAILED {name} (exit {proc.returncode}): {tail[0][:200]}; log {path}")

    def _stop(self) -> None:
        """SIGTERM the running cells: each stage releases its lock, a training run keeps its last
        checkpoint; their stamps stay unwritten, so the next run of the study reruns (resumes) them."""
        for proc, _, _ in self.running.values():
            proc.terminate()
        for proc, _, fh in self.running.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            fh.close()
