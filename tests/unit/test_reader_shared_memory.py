"""In-process readers release streaming's shared memory: the n-th read holds no more descriptors than the first.

Without the release every StreamingDataset a process built kept its shared-memory prefix, and each new one
attached to every existing prefix for good (~300 descriptors for the n-th in the test suite), which is why
the suite once ran one pytest process per file (scripts/run_tests.sh).
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from pipeline.common.mds_check import read_split_sequences, released_shared_memory

from mds_utils import write_ramp_split


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def split(tmp_path):
    return write_ramp_split(tmp_path / "split", 20)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_repeated_reads_hold_no_descriptors_and_leave_no_shared_memory(split):
    first = read_split_sequences(split)
    after_first, shm_after_first = _open_descriptors(), set(os.listdir("/dev/shm"))
    for _ in range(8):
        assert np.array_equal(read_split_sequences(split).numpy(), first.numpy())
    assert _open_descriptors() <= after_first + 1
    assert set(os.listdir("/dev/shm")) - shm_after_first == set()  # ours unlinked (others may come and go)
    assert first[3].tolist() == list(range(3, 11))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_an_unreleased_dataset_keeps_what_it_opened(split):
    """The check above can fail: the same reads without the release keep descriptors open."""
    from streaming import StreamingDataset

    with released_shared_memory():  # the test cleans up after itself, after measuring the leak
        before = _open_descriptors()
        kept = [StreamingDataset(local=str(split), shuffle=False, batch_size=1, predownload=None) for _ in range(3)]
        grown = _open_descriptors() - before
        del kept
    assert grown >= 3 * 6  # each dataset's own blocks at least, still open
    assert _open_descriptors() <= before + 1
