"""CPU-rank process settings (pipeline/common/cpu_host.py): glibc keeps freed pages, DeepSpeed's shm buffer
is unlinked once every rank has mapped it."""
from __future__ import annotations

import ctypes
import mmap
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.common import cpu_host

REPO = Path(__file__).resolve().parents[2]

# A training step's pattern: allocate a large tensor, write it, free it; page faults of each write.
STEPS = """
import resource, sys
import torch
from pipeline.common.cpu_host import keep_freed_memory_on_cpu
applied = keep_freed_memory_on_cpu("cpu")  # as the sampling and evaluation CLIs call it
faults = []
for _ in range(24):
    x = torch.empty(16 * 2 ** 20)  # 64 MB: over glibc's largest mmap threshold
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x.fill_(1.0)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del x
print(applied, *faults)
"""
PAGES = 16 * 2 ** 20 * 4 // mmap.PAGESIZE


def _fault_counts(setting: str) -> tuple[str, list[int]]:
    env = dict(os.environ, SEMDLM_MALLOC=setting, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    for var in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"):
        env.pop(var, None)
    out = subprocess.run([sys.executable, "-c", STEPS], env=env, capture_output=True, text=True, timeout=120,
                         check=True).stdout.split()
    return out[0], [int(v) for v in out[1:]]


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallopt"), reason="needs glibc's mallopt")
def test_freed_memory_is_reused_by_the_next_step_instead_of_faulted_in_again():
    applied, faults = _fault_counts("keep")
    assert applied == "True"
    assert max(faults[-6:]) < PAGES // 100, f"pages faulted in per step after warm-up: {faults}"
    applied, faults = _fault_counts("system")  # glibc's defaults: a fresh mmap every step
    assert applied == "False"
    assert min(faults[-6:]) > PAGES // 2, f"pages faulted in per step with glibc's defaults: {faults}"


def test_a_gpu_process_keeps_glibcs_defaults(monkeypatch):
    assert not cpu_host.keep_freed_memory_on_cpu("cuda")
    assert not cpu_host.keep_freed_memory_on_cpu("cuda:1")
    monkeypatch.setenv("SEMDLM_MALLOC", "system")
    assert not cpu_host.keep_freed_memory_on_cpu("cpu")


def test_a_misspelt_setting_is_refused_not_ignored(monkeypatch):
    from pipeline.common.errors import ConfigError

    monkeypatch.setenv("SEMDLM_MALLOC", "sytem")
    with pytest.raises(ConfigError, match="SEMDLM_MALLOC must be one of keep, system, got 'sytem'"):
        cpu_host.keep_freed_memory_on_cpu("cpu")


def test_the_shm_name_is_the_one_deepspeed_builds():
    import deepspeed

    source = (Path(deepspeed.__file__).parent / "ops" / "csrc" / "cpu" / "comm" / "shm.cpp").read_text()
    assert f'#define SHM_BUFFER_NAME "{cpu_host.DEEPSPEED_SHM_PREFIX}"' in source
    assert '"%s_%d_%s_%s",\n             SHM_BUFFER_NAME,\n             getuid(),\n             addr_string,\n' \
           '             port_string);' in source
    assert 'snprintf(shm_name, NAME_BUF_SIZE, "%s_%d", shm_name_prefix, rank);' in source


def test_release_unlinks_this_ranks_buffer_after_the_barrier_and_the_mapping_survives(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", f"test{os.getpid()}")
    path = cpu_host.deepspeed_shm_path(1)
    assert path.name == f"deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_test{os.getpid()}_1"
    path.write_bytes(b"x" * 4096)
    events = []
    try:
        with open(path, "r+b") as fh:
            view = mmap.mmap(fh.fileno(), 4096)  # what the other ranks hold
        assert cpu_host.release_deepspeed_shm(1, barrier=lambda: events.append(path.exists()))
        assert events == [True], "the barrier must come before the unlink"
        assert not path.exists()
        view[0:1] = b"y"  # still mapped: the memory lives until the last rank unmaps it
        assert view[0:2] == b"yx"
        view.close()
        assert not cpu_host.release_deepspeed_shm(1, barrier=lambda: None)  # none made (one process): no-op
    finally:
        path.unlink(missing_ok=True)
