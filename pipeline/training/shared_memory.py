"""Shared memory a killed run left behind, removed without touching a live run's.

mosaicml-streaming names its segments ``/dev/shm/NNNNNN_<what>`` (one prefix per dataset group) and
asks every new run to call ``clean_stale_shared_memory()`` first. Its own cleaner unlinks every prefix up
to the first free one, whether or not a live process still maps it: a second run starting on the same
machine (``pipeline.study --jobs 2``, two SLURM jobs on one node) breaks the first one
(``[Errno 2] No such file or directory: '/000000_locals'``). Here a prefix is stale only when no live
process maps any of its segments (``/proc/PID/maps``); where ``/proc`` cannot tell (not Linux), streaming's
cleaner runs as before.
"""
from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

SHM_DIR = Path("/dev/shm")
_SEGMENT = re.compile(r"^(\d{6})_([a-z_]+)$")


def mapped_segments(proc: Path = Path("/proc")) -> set[str] | None:
    """Names of the /dev/shm segments some live process maps (None where /proc has no maps)."""
    if not (proc / "self" / "maps").is_file():
        return None
    names: set[str] = set()
    for maps in proc.glob("[0-9]*/maps"):
        try:
            text = maps.read_text()
        except OSError:  # the process ended, or is another user's (its segments are not ours to remove)
            continue
        for line in text.splitlines():
            i = line.find("/dev/shm/")
            if i >= 0:
                names.add(line[i + len("/dev/shm/"):].split(" ")[0])
    return names


def stale_prefixes(in_use: set[str], shm_dir: Path = SHM_DIR) -> dict[str, list[Path]]:
    """prefix -> its segment files, for every streaming prefix none of whose segments a live process maps."""
    from streaming.base.util import SHM_TO_CLEAN

    groups: dict[str, list[Path]] = defaultdict(list)
    for path in shm_dir.iterdir() if shm_dir.is_dir() else ():
        m = _SEGMENT.match(path.name)
        if m and m.group(2) in SHM_TO_CLEAN:
            groups[m.group(1)].append(path)
    return {p: files for p, files in groups.items() if not any(f.name in in_use for f in files)}


def clean_stale_shared_memory() -> None:
    """Remove the segments of dead runs only. Collective: call on every rank (local rank 0 cleans, then a
    barrier, as streaming's cleaner does)."""
    import torch.distributed as dist
    from streaming.base.distributed import get_local_rank, maybe_init_dist
    from streaming.base.util import clean_stale_shared_memory as streaming_clean

    in_use = mapped_segments()
    if in_use is None:
        streaming_clean()
        return
    destroy = maybe_init_dist()
    if get_local_rank() == 0:
        for files in stale_prefixes(in_use).values():
            for path in files:
                path.unlink(missing_ok=True)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    if destroy:
        dist.destroy_process_group()
