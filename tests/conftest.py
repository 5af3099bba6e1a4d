"""Shared fixtures: where the shared corpora live, offline HF, small corpus slices."""
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
