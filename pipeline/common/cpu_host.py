"""Process settings for CPU runs (training ranks, the sampling and evaluation CLIs), which have neither
CUDA's caching allocator nor NCCL.

* :func:`keep_freed_memory`: glibc's malloc serves every block over 32 MB with a fresh ``mmap`` and
  hands it back with ``munmap`` on free, and trims the heap's free top; a training step on CPU allocates
  and frees the same large tensors every step (logits, their gradients, DeepSpeed's flat gradient
  partition, its bucket and norm temporaries), so every step page-faults them in anew: on this machine
  over a third of a ``tiny`` step and a sixth of a ``small`` one (docs/benchmarks.md). CUDA's caching
  allocator exists for the same reason. Turning ``mmap`` off for large blocks and trimming off keeps freed
  memory in the heap for the next step (the process keeps its peak resident size, as a GPU process keeps
  its peak reserved memory). Sampling on CPU gains as much (``tiny``, L = 128, 64 steps: 59 -> 29 s).
  ``SEMDLM_MALLOC=system`` leaves glibc's defaults alone. Called by the process's entry point (the
  trainer, the CLIs' ``main``), never by library functions: it changes the whole process.
* :func:`release_deepspeed_shm`: DeepSpeed's CPU communication op (``deepspeed_shm_comm_op``) gives
  every rank a 69 MB POSIX shared-memory buffer, ``/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_
  <port>_<rank>``, when all ranks are on one machine (the ``deepspeed`` launcher's ``LOCAL_SIZE``),
  and never unlinks it: every CPU run, finished or killed, left 69 MB of RAM per rank in ``/dev/shm``
  (this machine had collected 288 of them, 19 GB). Once every rank has mapped every other rank's
  buffer the names are no longer needed, so each rank unlinks its own; the mappings stay valid and
  the memory goes back to the system when the last rank exits, however it exits.
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path

from .errors import ConfigError

SHM_DIR = Path("/dev/shm")
DEEPSPEED_SHM_PREFIX = "deepspeed_allreduce_buffer"


# mallopt(3) parameters (glibc's malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
MALLOC_SETTINGS = ("keep", "system")  # SEMDLM_MALLOC: keep freed memory (default), or glibc's defaults
TRIM_THRESHOLD = 2 ** 31 - 1  # bytes: the largest mallopt takes (an int); freed memory below it stays


def keep_freed_memory(environ=os.environ) -> bool:
    """Make glibc keep freed memory for reuse (see the module docstring); False where it does not apply
    (``SEMDLM_MALLOC=system``, or a C library without ``mallopt``, e.g. musl or macOS)."""
    setting = environ.get("SEMDLM_MALLOC", "keep")
    if setting not in MALLOC_SETTINGS:
        raise ConfigError(f"SEMDLM_MALLOC must be one of {', '.join(MALLOC_SETTINGS)}, got {setting!r}")
    if setting == "system":
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def keep_freed_memory_on_cpu(device: str) -> bool:
    """:func:`keep_freed_memory` when a CLI runs its model on ``device`` = the CPU (``cpu``, ``cpu:0``)."""
    return str(device).split(":")[0] == "cpu" and keep_freed_memory()


def deepspeed_shm_path(rank: int, environ=os.environ) -> Path:
    """The name DeepSpeed's shm op gives ``rank``'s buffer (deepspeed/ops/csrc/cpu/comm/shm.cpp)."""
    addr, port = environ.get("MASTER_ADDR", ""), environ.get("MASTER_PORT", "")
    return SHM_DIR / f"{DEEPSPEED_SHM_PREFIX}_{os.getuid()}_{addr}_{port}_{rank}"


def release_deepspeed_shm(rank: int, barrier) -> bool:
    """Unlink this rank's DeepSpeed shm buffer after ``barrier()`` (every rank has opened it); True if
    there was one. Call on every rank right after ``deepspeed.init_distributed`` on CPU."""
    path = deepspeed_shm_path(rank)
    barrier()  # each rank leaves init_distributed only after mapping all the others' buffers
    try:
        path.unlink()
    except FileNotFoundError:  # a world not all on one machine, or one process: DeepSpeed made none
        return False
    return True
