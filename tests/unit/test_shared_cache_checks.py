"""Shard checks in a stream cache that other ranks on the node fill and prune at the same time.

streaming downloads a shard into ``local`` (copy to ``.tmp``, rename), decompresses it (``.tmp``, rename)
and, for a remote stream, deletes the ``.zstd``: all while another rank's reader may be hashing the same
files (pipeline.common.mds_check). A file that vanishes under the check is absent, not corrupt, and must
never escape as FileNotFoundError: that killed streaming's download thread ("Background thread failed")
in a two-rank resume on a fresh cache (CI, stop 21).
"""
from __future__ import annotations

import hashlib
import os
import threading

from pipeline.common.mds_check import file_problem, shard_entry_problems


def _churn(path, data: bytes, stop: threading.Event) -> None:
    """What streaming does to a cached .zstd, in a loop: atomic download, then removal after decompressing."""
    while not stop.is_set():
        tmp = f"{path}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.rename(tmp, path)
        os.unlink(path)


def test_a_file_deleted_while_it_is_checked_reads_as_absent_never_as_an_exception(tmp_path):
    data = os.urandom(1 << 16)
    path = tmp_path / "shard.00000.mds.zstd"
    hashes = {"sha1": hashlib.sha1(data).hexdigest()}
    stop = threading.Event()
    churn = threading.Thread(target=_churn, args=(path, data, stop))
    churn.start()
    wrong, errors = [], []
    try:
        for _ in range(20_000):  # a check-then-open raised here ~700 times in 20,000 (measured)
            try:
                problem = file_problem(path, len(data), hashes)
            except OSError as exc:
                errors.append(exc)
                continue
            if problem is not None and " is missing " not in problem:
                wrong.append(problem)  # never "truncated" or "corrupt": streaming's renames are atomic
    finally:
        stop.set()
        churn.join()
    assert not errors, f"{len(errors)} checks raised, first: {errors[0]!r}"
    assert not wrong, wrong[:3]


def test_a_damaged_or_missing_file_is_still_a_problem(tmp_path):
    data = os.urandom(4096)
    path = tmp_path / "shard.00000.mds.zstd"
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    sha1 = hashlib.sha1(data).hexdigest()
    entry = {"raw_data": {"basename": "shard.00000.mds", "bytes": 9, "hashes": {}},
             "zip_data": {"basename": path.name, "bytes": len(data), "hashes": {"sha1": sha1}}}
    (problem,) = shard_entry_problems(tmp_path, entry)  # raw absent next to its .zstd: not decompressed yet
    assert problem[0] == path and "is corrupt: its sha1 differs" in problem[1]
    path.unlink()
    (problem,) = shard_entry_problems(tmp_path, entry)
    assert problem[0] == path and f"{path} is missing" in problem[1]
