"""CPU process settings (pipeline/common/cpu_host.py): when glibc's heap setting applies, and DeepSpeed's shm
buffer is unlinked once every rank has mapped it. The page-fault effect itself, which needs fresh processes:
tests/integration/test_cpu_host_heap.py."""
from __future__ import annotations

import importlib.util
import mmap
import os
from pathlib import Path

import pytest

from pipeline.common import cpu_host


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
    spec = importlib.util.find_spec("deepspeed")  # its source, without importing it
    source = (Path(spec.origin).parent / "ops" / "csrc" / "cpu" / "comm" / "shm.cpp").read_text()
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
