"""The stale shared-memory cleaner removes a dead run's streaming segments and keeps a live run's."""
from __future__ import annotations

import subprocess
import sys
from multiprocessing import shared_memory
from pathlib import Path

import pytest

from pipeline.training.shared_memory import SHM_DIR, clean_stale_shared_memory, mapped_segments, stale_prefixes

pytestmark = pytest.mark.skipif(mapped_segments() is None or not SHM_DIR.is_dir(), reason="needs Linux /proc, /dev/shm")

LIVE, DEAD = "999990", "999991"  # prefixes far above any a real run takes


def _leave_segment(name: str) -> None:
    """A segment whose creator exited without unlinking it (as a killed run leaves one)."""
    code = ("from multiprocessing import shared_memory, resource_tracker\n"
            f"s = shared_memory.SharedMemory(name={name!r}, create=True, size=8)\n"
            "resource_tracker.unregister(s._name, 'shared_memory')\n"
            "s.close()\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_dead_runs_segments_go_and_a_live_runs_stay():
    live = shared_memory.SharedMemory(name=f"{LIVE}_locals", create=True, size=8)  # mapped by this process
    try:
        _leave_segment(f"{LIVE}_barrier")  # same prefix as a live mapping: the prefix is in use
        _leave_segment(f"{DEAD}_locals")
        _leave_segment(f"{DEAD}_barrier")
        stale = stale_prefixes(mapped_segments())
        assert DEAD in stale and LIVE not in stale
        assert sorted(p.name for p in stale[DEAD]) == [f"{DEAD}_barrier", f"{DEAD}_locals"]
        clean_stale_shared_memory()
        assert not (SHM_DIR / f"{DEAD}_locals").exists() and not (SHM_DIR / f"{DEAD}_barrier").exists()
        assert (SHM_DIR / f"{LIVE}_locals").exists() and (SHM_DIR / f"{LIVE}_barrier").exists()
    finally:
        live.close()
        live.unlink()
        for name in (f"{LIVE}_barrier", f"{DEAD}_locals", f"{DEAD}_barrier"):
            Path(SHM_DIR / name).unlink(missing_ok=True)
