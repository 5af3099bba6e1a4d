"""Exclusive directory locks (pipeline/common/locks.py): who holds them, when a second job may take
them over, and that every way out of a job releases them. SIGTERM and the CLIs: tests/integration/test_locks_cli.py."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from pipeline.common import locks
from pipeline.common.artifacts import StageRun, stage_errors
from pipeline.common.locks import DirectoryLock, LockHeldError, output_lock_path


def dead_pid() -> int:
    """A pid no process has: beyond the kernel's pid_max."""
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1


def write_foreign_lock(path: Path, **fields) -> dict:
    """A lock file as another job would have left it (defaults: this host, a dead pid, no flock)."""
    holder = {"format": 1, "host": socket.gethostname(), "pid": dead_pid(), "slurm_job_id": None,
              "slurm_restart_count": 0, "started": "2024-01-02T03:04:05+00:00", "command": "python -m preprocess",
              "token": "foreign", "flock": False, **fields}
    path.write_text(json.dumps(holder))
    return holder


def test_a_held_lock_refuses_a_second_holder_and_names_the_first(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    path = tmp_path / ".out.lock"
    with DirectoryLock(path, what="out") as first:
        holder = json.loads(path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert holder["slurm_job_id"] == "4242" and holder["started"] and "pytest" in holder["command"]
        assert holder["flock"] is True  # a local filesystem supports flock
        with pytest.raises(LockHeldError) as info:
            DirectoryLock(path, what="out").acquire()
        message = str(info.value)
        for needle in (f"host {socket.gethostname()}", f"pid {os.getpid()}", "SLURM job 4242",
                       f"since {holder['started']}", "--break-lock"):
            assert needle in message, message
        assert first.held
    assert not path.exists()


def test_dead_pid_on_this_host_is_taken_over(tmp_path, capsys):
    path = tmp_path / ".out.lock"
    write_foreign_lock(path)
    with DirectoryLock(path, what="out") as lock:
        assert json.loads(path.read_text())["token"] == lock.holder["token"]
    assert "took over the lock" in capsys.readouterr().err
    assert not path.exists()


def test_live_pid_whose_kernel_lock_is_gone_is_taken_over(tmp_path):
    """The pid was reused: the holder recorded a flock, and nobody holds it any more."""
    path = tmp_path / ".out.lock"
    write_foreign_lock(path, pid=os.getppid(), flock=True)
    with DirectoryLock(path, what="out"):
        pass
    write_foreign_lock(path, pid=os.getppid(), flock=False)  # no kernel lock to tell: the live pid wins
    with pytest.raises(LockHeldError, match=f"pid {os.getppid()}"):
        DirectoryLock(path, what="out").acquire()


def test_our_own_pid_in_a_lock_we_do_not_hold_is_a_previous_process(tmp_path):
    """A fresh container numbers its processes from 1 again: the crashed holder may have had our pid."""
    path = tmp_path / ".out.lock"
    write_foreign_lock(path, pid=os.getpid())
    with DirectoryLock(path, what="out") as lock:
        assert json.loads(path.read_text())["token"] == lock.holder["token"]


def test_another_host_is_never_assumed_gone_without_break_lock(tmp_path):
    path = tmp_path / ".out.lock"
    write_foreign_lock(path, host="node-elsewhere-17", slurm_job_id="99")
    with pytest.raises(LockHeldError, match="host node-elsewhere-17, pid .*SLURM job 99"):
        DirectoryLock(path, what="out").acquire()
    with DirectoryLock(path, what="out", break_lock=True) as lock:
        assert json.loads(path.read_text())["token"] == lock.holder["token"]


def test_an_earlier_run_of_the_same_slurm_job_is_taken_over(tmp_path, monkeypatch):
    path = tmp_path / ".out.lock"
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    write_foreign_lock(path, host="node-a", slurm_job_id="77", slurm_restart_count=1)
    with DirectoryLock(path, what="out"):
        pass
    write_foreign_lock(path, host="node-a", slurm_job_id="77", slurm_restart_count=2)  # a parallel step
    with pytest.raises(LockHeldError):
        DirectoryLock(path, what="out").acquire()


def test_an_unreadable_lock_file_is_not_taken_over(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "_READ_TRIES", 2)
    path = tmp_path / ".out.lock"
    path.write_text("{not json")
    with pytest.raises(LockHeldError, match="names no holder"):
        DirectoryLock(path, what="out").acquire()
    with DirectoryLock(path, what="out", break_lock=True):
        pass


def test_release_after_a_break_leaves_the_new_holders_file(tmp_path):
    path = tmp_path / ".out.lock"
    first = DirectoryLock(path, what="out").acquire()
    second = DirectoryLock(path, what="out", break_lock=True).acquire()
    first.release()  # the broken holder exits later: it must not delete the new lock
    assert json.loads(path.read_text())["token"] == second.holder["token"]
    second.release()
    assert not path.exists()


def test_released_on_exception(tmp_path):
    path = tmp_path / ".out.lock"
    with pytest.raises(RuntimeError, match="job failed"):
        with DirectoryLock(path, what="out"):
            raise RuntimeError("job failed")
    assert not path.exists()
    DirectoryLock(path, what="out").acquire().release()


def test_stage_run_holds_the_output_lock_while_it_writes(tmp_path, capsys):
    out = tmp_path / "artifact"
    run = StageRun("demo", out, config={"a": 1})
    with run as tmp:
        (tmp / "x.txt").write_text("x")
        assert output_lock_path(out).is_file()
        second = StageRun("demo", out, config={"a": 2})
        with pytest.raises(SystemExit) as exit_info:
            with stage_errors("prog"):
                with second:
                    pass
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith(f"prog: error: {out} is locked by another job: host ")
    assert not output_lock_path(out).exists() and (out / "x.txt").is_file()
    assert not list(tmp_path.glob(".artifact.tmp-*"))


def test_stage_run_releases_its_lock_when_the_stage_fails(tmp_path):
    out = tmp_path / "artifact"
    run = StageRun("demo", out, config={})
    with pytest.raises(KeyError):
        with run.locked():  # taken early (before expensive work), kept through `with run`
            with run:
                assert output_lock_path(out).is_file()
            assert output_lock_path(out).is_file()
            raise KeyError("boom")
    assert not output_lock_path(out).exists() and out.is_dir()


def test_only_rank_zero_locks_a_training_run_dir(tmp_path, monkeypatch):
    from pipeline.training.distributed import lock_run_dir

    monkeypatch.setenv("RANK", "1")
    with lock_run_dir(str(tmp_path / "run"), break_lock=False):
        assert not (tmp_path / "run" / ".lock").exists()
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "0")
    with lock_run_dir(str(tmp_path / "run"), break_lock=False):
        assert (tmp_path / "run" / ".lock").is_file()
    assert not (tmp_path / "run" / ".lock").exists()
