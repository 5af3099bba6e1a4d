"""glibc's heap setting on CPU (pipeline/common/cpu_host.py): in a fresh process, a step's large tensors are
reused instead of faulted in again; with ``SEMDLM_MALLOC=system`` they are faulted in every step."""
from __future__ import annotations

import ctypes
import mmap
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
