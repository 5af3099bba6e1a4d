"""Datasets built at the same moment by separate processes on one machine take distinct shared-memory prefixes.

streaming's registration (look for the first free prefix, then create ``NNNNNN_locals``) is widened here
with a sleep between the two, so the race CI once lost by chance (``FileExistsError: '/001075_locals'``,
two study cells starting together) is lost every time without the lock.
"""
from __future__ import annotations

import multiprocessing as mp
import os

import pytest

from mds_utils import write_ramp_split

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="streaming's segments live in /dev/shm")
PROCESSES = 3


def _build(split: str, verified: bool, start, built, results) -> None:
    import time

    from streaming import StreamingDataset
    from streaming.base.shared import prefix

    find = prefix._check_and_find_retrying

    def slow_find(*args, **kwargs):
        found = find(*args, **kwargs)
        time.sleep(0.1)  # another process looks for a free prefix meanwhile
        return found

    prefix._check_and_find_retrying = slow_find
    from pipeline.common.mds_check import released_shared_memory, verified_dataset_class

    cls = verified_dataset_class() if verified else StreamingDataset
    start.wait()
    with released_shared_memory():  # a forked child skips atexit: its segments are unlinked here
        try:
            ds = cls(local=split, shuffle=False, batch_size=1, predownload=None)
            results.put(("ok", ds._shm_prefix_int))
        except Exception as error:  # noqa: BLE001 - the test counts what each process met
            ds = None
            results.put((type(error).__name__, str(error)))
        built.wait()  # every dataset is alive until all have registered
        del ds


def _race(split, verified: bool) -> list:
    ctx = mp.get_context("fork")  # fast; the children run no torch ops
    start, built, results = ctx.Barrier(PROCESSES), ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=_build, args=(str(split), verified, start, built, results)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    out = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return out


@pytest.fixture
def split(tmp_path):
    return write_ramp_split(tmp_path / "split", 4)


def test_concurrent_registrations_take_distinct_prefixes(split):
    results = _race(split, verified=True)
    assert [r[0] for r in results] == ["ok"] * PROCESSES, results
    assert len({r[1] for r in results}) == PROCESSES


def test_without_the_lock_the_same_race_fails(split):
    """The check above can fail: streaming's own class, raced the same way, collides."""
    results = _race(split, verified=False)
    assert any(kind == "FileExistsError" for kind, _ in results), results
