"""The neighbor_index stage: semantic neighbour tables, sparse association S+ and unigram prior.

Run it with ``python -m neighbor_index``; read its artifact with :func:`load_neighbor_tables`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

TABLE_FILES = ("neighbors", "similarities", "valid_vocab", "prior_support", "unigram_prior",
               "semantic_assoc_indices", "semantic_assoc_weights")


def load_neighbor_tables(directory: str | Path, check: bool = True) -> dict[str, np.ndarray]:
    """The arrays of a neighbor_index artifact by name (``neighbors``, ``similarities``, ...).

    With ``check`` the manifest must be a complete "neighbor_index" artifact (raises
    ``pipeline.artifacts.ArtifactError`` otherwise).
    """
    from pipeline.artifacts import load_manifest

    directory = Path(directory)
    if check:
        load_manifest(directory, stage="neighbor_index")
    return {name: np.load(directory / f"{name}.npy", allow_pickle=False) for name in TABLE_FILES}


__all__ = ["TABLE_FILES", "load_neighbor_tables"]
