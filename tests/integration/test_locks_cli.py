"""Locks seen from outside: SIGTERM releases them, a stage CLI and pipeline/train.py refuse a locked
directory (exit 2, one line naming the holder) and --break-lock takes it over. The lock's logic:
tests/unit/test_locks.py."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from pipeline.common.artifacts import StageRun, load_manifest, verify_artifact
from pipeline.common.locks import DirectoryLock, output_lock_path, run_dir_lock_path

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

HOLD_STAGE_RUN = """
import sys, time
from pipeline.common.artifacts import StageRun
with StageRun("demo", sys.argv[1], config={"v": 2}) as tmp:
    (tmp / "data.txt").write_text("half written")
    print("writing", flush=True)
    time.sleep(120)
"""


def env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1",
                PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


def error_lines(stderr: str, prog: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"{prog}: error: ")]


def test_sigterm_releases_the_lock_and_removes_the_partial_output(tmp_path):
    out = tmp_path / "artifact"
    with StageRun("demo", out, config={"v": 1}) as tmp:  # the previous artifact
        (tmp / "data.txt").write_text("complete")
    proc = subprocess.Popen([PYTHON, "-c", HOLD_STAGE_RUN, str(out)], cwd=REPO, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing", proc.stderr.read()
        holder = json.loads(output_lock_path(out).read_text())
        assert holder["pid"] == proc.pid and list(tmp_path.glob(".artifact.tmp-*"))
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    assert not output_lock_path(out).exists()
    assert not list(tmp_path.glob(".artifact.*-*")), "the half-written directory was left behind"
    assert load_manifest(out, stage="demo")["config"] == {"v": 1} and verify_artifact(out) == []


def test_preprocess_refuses_a_locked_output_and_breaks_the_lock_on_request(tmp_path, lm1b_lines):
    src = tmp_path / "train.txt"
    src.write_text("\n".join(lm1b_lines[:40]) + "\n")
    out = tmp_path / "pre"
    cmd = [PYTHON, "-m", "preprocess", "--input", str(src), "--out", str(out), "--mode", "lm1b", "--seq-len", "32",
           "--no-progress"]
    with DirectoryLock(output_lock_path(out), what=str(out)):  # this test process is the live holder
        proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = error_lines(proc.stderr, "python -m preprocess")
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in (f"{out} is locked by another job", f"host {socket.gethostname()}", f"pid {os.getpid()}",
                   "since ", "--break-lock"):
        assert needle in lines[0], lines[0]
    assert not out.exists()

    # A holder on another node is never assumed gone; --break-lock takes its lock.
    output_lock_path(out).write_text(json.dumps({"host": "node-elsewhere", "pid": 1, "started": "yesterday",
                                                 "slurm_job_id": "12", "token": "x"}))
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "host node-elsewhere, pid 1, SLURM job 12" in proc.stderr
    proc = subprocess.run(cmd + ["--break-lock"], cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "took over the lock of host node-elsewhere" in proc.stderr
    assert load_manifest(out, stage="preprocess") and not output_lock_path(out).exists()


def test_train_refuses_a_run_dir_locked_by_a_live_process(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(["sleep", "300"])
    lock = run_dir_lock_path(run_dir)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid, "slurm_job_id": "31",
                                "started": "2024-05-06T07:08:09+00:00", "command": "sleep 300", "token": "t"}))
    # --preprocessed does not exist: the lock is checked before the artifacts and before DeepSpeed starts.
    cmd = [PYTHON, "pipeline/train.py", "--config", "configs/tiny.yaml", "--run-dir", str(run_dir),
           "--preprocessed", str(tmp_path / "missing")]
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, proc.stderr
        lines = error_lines(proc.stderr, "pipeline/train.py")
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert f"run directory {run_dir} is locked by another job" in lines[0]
        assert f"pid {holder.pid}, SLURM job 31, since 2024-05-06T07:08:09+00:00 (command: sleep 300)" in lines[0]
        assert "deepspeed" not in (proc.stdout + proc.stderr).lower()
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone: the next launch takes the lock over and gets as far as the missing artifact.
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "took over the lock" in proc.stderr and "does not exist" in proc.stderr
    assert not lock.exists()
