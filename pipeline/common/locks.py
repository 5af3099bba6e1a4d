"""Exclusive locks on the directories a job writes: one per stage artifact, one per training run.

Two jobs on one directory (a requeued SLURM job racing a still-running one, a user launching twice)
must not both write. A lock is a small JSON file naming its holder (host, pid, SLURM job, start
time, command line). It is created atomically (``O_CREAT | O_EXCL``) and, where the filesystem
supports it, also ``flock()``-ed, so the kernel drops the lock of a holder that crashed. It is
released on a normal exit, on an exception and on SIGTERM (turned into ``SystemExit`` while a lock
is held, so ``finally`` blocks and context managers run).

A second job that finds the file takes it over when the holder is *provably* gone:

* the holder ran on this host and its pid is dead, or its kernel lock is gone (the pid was reused);
* the holder is an earlier run of this very SLURM job (same ``SLURM_JOB_ID``, lower
  ``SLURM_RESTART_COUNT``): SLURM ends a job before it starts its requeued run.

Otherwise it stops with :class:`LockHeldError` (exit status 2 through ``stage_errors``) naming the
holder. ``break_lock=True`` (``--break-lock``) takes the lock whatever the holder's state.
"""
from __future__ import annotations

import atexit
import datetime as _dt
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: the O_EXCL file alone
    fcntl = None

from .errors import StageError

LOCK_FORMAT = 1
RUN_DIR_LOCK = ".lock"  # inside a training run directory
_ATTEMPTS = 50          # tries to create the file while other jobs release or take it over
_RETRY_S = 0.05
_READ_TRIES = 20        # a new holder writes its file right after creating it: empty for a moment
_held: set[DirectoryLock] = set()
_sigterm_installed = False


class LockHeldError(StageError, RuntimeError):
    """The directory is locked by another job that may still be running."""


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: beyond any pid
        return False
    except PermissionError:
        return True
    return True


def output_lock_path(out_dir: str | os.PathLike) -> Path:
    """Lock of a stage artifact: a sibling ``.NAME.lock`` (the artifact directory itself is swapped)."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.lock"


def run_dir_lock_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / RUN_DIR_LOCK


def _slurm_restart_count() -> int:
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        return 0


def holder_info() -> dict:
    """Who this process is, as recorded in the lock files it holds."""
    return {"format": LOCK_FORMAT, "host": socket.gethostname(), "pid": os.getpid(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "slurm_restart_count": _slurm_restart_count(),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv), "token": uuid.uuid4().hex}


def describe_holder(holder: dict) -> str:
    """``host H, pid P, SLURM job J, since T (command: ...)``."""
    parts = [f"host {holder.get('host')}", f"pid {holder.get('pid')}"]
    if holder.get("slurm_job_id"):
        restart = holder.get("slurm_restart_count") or 0
        parts.append(f"SLURM job {holder['slurm_job_id']}" + (f" (restart {restart})" if restart else ""))
    text = ", ".join(parts) + f", since {holder.get('started')}"
    command = str(holder.get("command") or "")
    if command:
        text += f" (command: {command if len(command) <= 120 else command[:117] + '...'})"
    return text


def gone_reason(holder: dict, kernel_lock_free: bool) -> str | None:
    """Why the holder is provably gone, or None when it may still be running."""
    here = socket.gethostname()
    pid = holder.get("pid")
    if holder.get("host") == here and isinstance(pid, int) and pid > 0:
        if pid == os.getpid():  # pids restart low in a fresh container: ours, but not a lock we hold
            if not any(lock.holder.get("token") == holder.get("token") for lock in _held):
                return f"its pid {pid} is now this process's, which does not hold it"
        elif not pid_alive(pid):
            return f"its process {pid} on {here} has exited"
        elif holder.get("flock") and kernel_lock_free:
            return f"its kernel lock is gone (pid {pid} now belongs to another process)"
    job = os.environ.get("SLURM_JOB_ID")
    restart = holder.get("slurm_restart_count")
    if job and holder.get("slurm_job_id") == job and isinstance(restart, int) and restart < _slurm_restart_count():
        return f"it is an earlier run (restart {restart}) of this SLURM job {job}"
    return None


class DirectoryLock:
    """An exclusive lock held through a lock file at ``path``; ``what`` names the directory in messages.

        with DirectoryLock(output_lock_path(out), what=str(out), break_lock=args.break_lock):
            ... write out ...
    """

    def __init__(self, path: str | os.PathLike, what: str, break_lock: bool = False):
        self.path, self.what, self.break_lock = Path(path), what, break_lock
        self.holder: dict | None = None
        self._fd: int | None = None
        self._owner_pid = os.getpid()  # a forked child inherits the object, never the lock
        self._blocked_by: dict | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> DirectoryLock:
        if self.held:
            raise RuntimeError(f"{self.path} is already held by this object")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(_ATTEMPTS):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
            except FileExistsError:
                self._clear_if_stale()  # raises LockHeldError while the holder may be alive
                continue
            self._own(fd)
            return self
        gone = f" of {describe_holder(self._blocked_by)}" if self._blocked_by else ""
        raise LockHeldError(f"{self.what}: could not take over the lock{gone}: another process still holds its "
                            f"kernel lock (a child of that job, or another job taking it over); rerun with "
                            f"--break-lock if none of them should be writing ({self.path})")

    def release(self) -> None:
        if self._fd is None or os.getpid() != self._owner_pid:
            return
        fd, self._fd = self._fd, None
        _held.discard(self)
        try:
            # Only our own file: after a --break-lock by another job the path names its lock.
            if _same_file(fd, self.path) and (_read_holder(self.path) or {}).get("token") == self.holder["token"]:
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(fd)  # drops the kernel lock, after the file is gone
        if not _held:
            _restore_sigterm()

    # -- internals
    def _own(self, fd: int) -> None:
        try:
            info = holder_info()
            info["flock"] = _try_flock(fd) == "free"  # a fresh file: fails only where flock is unsupported
            os.write(fd, (json.dumps(info, indent=1) + "\n").encode())
            os.fsync(fd)
        except BaseException:
            os.unlink(self.path)
            os.close(fd)
            raise
        self._fd, self.holder, self._owner_pid = fd, info, os.getpid()
        _held.add(self)
        _install_sigterm()

    def _clear_if_stale(self) -> None:
        """The lock file exists: remove it if the holder is provably gone (or on --break-lock), else raise."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return  # released meanwhile
        try:
            holder = _read_holder(self.path)
            kernel_lock = _try_flock(fd)
            if self.break_lock:
                reason = "--break-lock"
            elif holder is None:
                raise LockHeldError(f"{self.what} is locked: {self.path} exists but names no holder (a job that "
                                    "crashed while taking it?); remove it, or rerun with --break-lock")
            else:
                reason = gone_reason(holder, kernel_lock == "free")
                if reason is None:
                    raise LockHeldError(f"{self.what} is locked by another job: {describe_holder(holder)}; "
                                        f"wait for it, or rerun with --break-lock if it is gone ({self.path})")
                if kernel_lock == "held":  # an orphaned child of the holder, or another job taking over now
                    self._blocked_by = holder
                    time.sleep(_RETRY_S)
                    return
            if not _same_file(fd, self.path):
                return  # replaced meanwhile: look again
            os.unlink(self.path)
            who = describe_holder(holder) if holder else "an unknown holder"
            print(f"{self.what}: took over the lock of {who}: {reason}", file=sys.stderr, flush=True)
        finally:
            os.close(fd)


def _try_flock(fd: int) -> str:
    """"free" (we hold the kernel lock now), "held" (someone else does) or "unsupported"."""
    if fcntl is None:
        return "unsupported"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return "held"
    except OSError:  # ENOLCK, EOPNOTSUPP, ...: a filesystem without flock
        return "unsupported"
    return "free"


def _same_file(fd: int, path: Path) -> bool:
    """``path`` still names the open file ``fd`` (not unlinked, not replaced)."""
    try:
        mine, current = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return mine.st_nlink > 0 and (mine.st_dev, mine.st_ino) == (current.st_dev, current.st_ino)


def _read_holder(path: Path) -> dict | None:
    for _ in range(_READ_TRIES):
        try:
            holder = json.loads(path.read_text())
            if isinstance(holder, dict):
                return holder
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            pass
        time.sleep(_RETRY_S)
    return None


# --------------------------------------------------------------------------- exit paths
def _release_all() -> None:
    for lock in list(_held):
        lock.release()  # a no-op in a forked child that inherited the set


def _on_sigterm(signum, frame) -> None:
    # SystemExit unwinds the stack: StageRun removes its temporary directory, locks are released.
    raise SystemExit(128 + signum)


def _install_sigterm() -> None:
    """While a lock is held, SIGTERM exits through Python instead of killing the process outright;
    a handler installed by the program (the trainer's checkpoint-and-exit) is left alone."""
    global _sigterm_installed
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)
        _sigterm_installed = True


def _restore_sigterm() -> None:
    global _sigterm_installed
    if _sigterm_installed and threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGTERM) is _on_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _sigterm_installed = False


atexit.register(_release_all)  # a lock still held at interpreter exit (an uncaught exception)


def add_break_lock_argument(parser) -> None:
    """The ``--break-lock`` flag every stage CLI and pipeline/train.py take (args.break_lock)."""
    parser.add_argument("--break-lock", action="store_true",
                        help="take over the lock of the directory this job writes even if the job named in "
                             "it may still be running (when you know it is gone, e.g. killed on another node; "
                             "README.md: Running on a shared cluster)")
