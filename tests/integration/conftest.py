"""The data every training test shares (session-scoped): a real preprocess artifact of the LM1B sample at 32
tokens, and a contract-conformant synthetic neighbour artifact over it (neighbor_index has its own tests)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from neighbor_tables import shifted_tables, write_neighbor_artifact

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def build_preprocessed(corpora: Path, out: Path) -> Path:
    subprocess.run([PYTHON, "-m", "preprocess", "--input", str(corpora / "lm1b_sample" / "train.txt"),
                    "--valid-fraction", "0.05", "--out", str(out), "--mode", "lm1b", "--seq-len", "32",
                    "--no-progress"], cwd=REPO, check=True, capture_output=True)
    return out


def build_neighbor_artifact(preprocessed: Path, out: Path, k_max: int = 8) -> Path:
    """A contract-conformant neighbour artifact (stage "neighbor_index") with synthetic similarities.

    Row v lists the k_max next valid ids after v (never v itself); the prior is the smoothed unigram
    distribution of the training split restricted to valid tokens (Eq 119's support).
    """
    from pipeline.common.artifacts import load_manifest

    manifest = load_manifest(preprocessed, stage="preprocess")
    tokenizer = manifest["tokenizer"]
    V = int(tokenizer["vocab_size"])
    valid = np.ones(V, dtype=bool)
    valid[list(tokenizer["special_ids"].values())] = False
    counts = np.load(preprocessed / "unigram_counts.npy", allow_pickle=False).astype(np.float64)[:V]
    tables = shifted_tables(valid, k_max, (0.9, 0.5), prior=np.where(valid, counts + 1.0, 0.0))
    return write_neighbor_artifact(out, tables, config={"synthetic": True, "k_max": k_max},
                                   upstream={"preprocessed": preprocessed}, tokenizer=tokenizer)


@pytest.fixture(scope="session")
def preprocessed(tmp_path_factory, corpora) -> Path:
    return build_preprocessed(corpora, tmp_path_factory.mktemp("train_data") / "pre32")


@pytest.fixture(scope="session")
def neighbors(tmp_path_factory, preprocessed) -> Path:
    return build_neighbor_artifact(preprocessed, tmp_path_factory.mktemp("train_nn") / "nn")
