"""One streaming registration at a time per machine, so no two jobs take the same shared-memory prefix.

Each ``StreamingDataset`` registers a prefix: every rank looks for the first free ``NNNNNN``, then the
local leader creates ``/dev/shm/NNNNNN_locals``. Two jobs on one machine doing that at the same moment
(``pipeline.study --jobs 2``, two SLURM jobs sharing a node, an evaluation next to a training) find the
same free number, and the second stops with ``FileExistsError: '/001075_locals'`` (seen in CI). Every
dataset this pipeline builds (``mds_check.verified_dataset_class``) is made inside
:func:`registration_lock`: a ``flock`` on a file in ``/dev/shm`` (node-local, like the segments it
guards), held by the job's local leader; under torch.distributed the job's other ranks wait at a barrier
until it holds it, so they too look for the free number while no other job can take it.

The wait is bounded (:data:`WAIT_S`): two multi-node jobs sharing two nodes could each hold the lock on
one node while their barrier waits for the other; after the wait a registration goes ahead unlocked, as
it did before, with a one-line warning.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: registrations are not serialised (streaming's own behaviour)
    fcntl = None

LOCK_NAME = "semdlm_streaming_registration.lock"
WAIT_S = 300.0  # a registration reads index.json files (downloads them for a remote stream): seconds, not minutes
_POLL_S = 0.05


def lock_path() -> Path:
    """The node-local lock file: in /dev/shm where streaming keeps its segments, else the temp directory."""
    shm = Path("/dev/shm")
    return (shm if shm.is_dir() else Path(tempfile.gettempdir())) / LOCK_NAME


def _distributed():
    try:
        import torch.distributed as dist
    except ImportError:
        return None
    return dist if dist.is_available() and dist.is_initialized() else None


def _acquire(handle, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)


@contextlib.contextmanager
def registration_lock(wait_s: float = WAIT_S):
    """Hold the machine's streaming-registration lock while the block builds a dataset (collective under
    torch.distributed: every rank enters it)."""
    dist = _distributed()
    leader = int(os.environ.get("LOCAL_RANK", "0")) == 0 if dist else True
    handle = None
    if leader and fcntl is not None:
        path = lock_path()
        handle = open(path, "a+")  # noqa: SIM115 - closed in finally, after the barrier below
        with contextlib.suppress(OSError):
            os.chmod(path, 0o666)  # another user's job on a shared node takes the same lock
        if not _acquire(handle, wait_s):
            print(f"warning: {path} still held after {wait_s:.0f} s; registering this dataset unlocked",
                  file=sys.stderr, flush=True)
            handle.close()
            handle = None
    try:
        if dist:
            dist.barrier()  # the job's other ranks look for a free prefix only once their leader holds the lock
        yield
        if dist:
            dist.barrier()  # every rank has registered before another job may
    finally:
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
