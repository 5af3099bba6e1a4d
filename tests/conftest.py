"""Shared fixtures: where the shared corpora live, offline HF, small corpus slices, folder markers.

Layout: ``tests/unit`` (fast: no subprocess, no DeepSpeed, no CLI runs; ``make test-fast``) and
``tests/integration`` (CLIs, subprocesses, DeepSpeed); every test is marked with its folder's name
(``pytest -m "not integration"``). Helper modules here (this folder is on sys.path):
``neighbor_tables`` (the one neighbour-table maker and artifact writer, the kernel maker),
``cli_utils`` (running a stage CLI in-process), ``mds_utils`` (reading MDS splits back).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CORPORA = SHARED / "corpora"


def pytest_collection_modifyitems(config, items):
    for item in items:
        folder = Path(str(item.fspath)).parent
        if folder.parent == Path(__file__).parent:
            item.add_marker(folder.name)  # unit / integration (declared in setup.cfg)


@pytest.fixture(scope="session")
def corpora() -> Path:
    if not CORPORA.is_dir():
        pytest.fail(f"shared corpora not found at {CORPORA} (tests read ../shared/corpora)")
    return CORPORA


@pytest.fixture(scope="session")
def lm1b_lines(corpora) -> list[str]:
    return (corpora / "lm1b_sample" / "train.txt").read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="session")
def tokenizer():
    from pipeline.common.hf_assets import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: intra-op threads only add overhead (10x on a busy 2-core machine). A module opts in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
