"""Reader of the neighbour-table artifact written by ``python -m neighbor_index``.

The artifact (stage "neighbor_index") holds ``neighbors.npy`` (int32 [V, k_max], most similar
valid tokens first, never the row token itself), ``similarities.npy`` (float32 [V, k_max], cosine),
``valid_vocab.npy`` (bool [V]) and ``unigram_prior.npy`` (float64 [V], Eq 119, sums to 1).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .artifacts import ArtifactError, load_manifest

STAGE = "neighbor_index"
FILES = ("neighbors.npy", "similarities.npy", "valid_vocab.npy", "unigram_prior.npy")


@dataclass(frozen=True)
class NeighborTables:
    """The four arrays of a neighbour artifact as CPU tensors, plus the manifest they came with."""

    neighbors: torch.Tensor  # long [V, k_max]
    similarities: torch.Tensor  # float32 [V, k_max]
    valid_vocab: torch.Tensor  # bool [V]
    unigram_prior: torch.Tensor  # float64 [V]
    manifest: dict

    @property
    def vocab_size(self) -> int:
        return self.neighbors.shape[0]

    @property
    def k_max(self) -> int:
        return self.neighbors.shape[1]

    def kernel_inputs(self, device: torch.device | str | None = None) -> dict:
        """Keyword arguments of ``pipeline.kernels.build_kernel`` (neighbour-related ones)."""
        return {"neighbors": self.neighbors.to(device or "cpu"), "similarities": self.similarities.to(device or "cpu"),
                "valid_vocab": self.valid_vocab.to(device or "cpu"),
                "unigram_prior": self.unigram_prior.to(device or "cpu")}


def load_neighbor_tables(directory: str | os.PathLike) -> NeighborTables:
    """Load and check a complete neighbour artifact; raise ArtifactError naming ``directory``."""
    directory = Path(directory)
    manifest = load_manifest(directory, stage=STAGE)
    arrays = {}
    for name in FILES:
        path = directory / name
        if not path.is_file():
            raise ArtifactError(f"{directory}: missing {name}")
        arrays[name] = np.load(path, allow_pickle=False)
    nb, sims = arrays["neighbors.npy"], arrays["similarities.npy"]
    valid, prior = arrays["valid_vocab.npy"], arrays["unigram_prior.npy"]
    V = nb.shape[0] if nb.ndim == 2 else -1
    problems = []
    if nb.ndim != 2 or not np.issubdtype(nb.dtype, np.integer):
        problems.append(f"neighbors.npy must be an integer [V, k] array, got {nb.dtype} {nb.shape}")
    if sims.shape != nb.shape:
        problems.append(f"similarities.npy shape {sims.shape} != neighbors.npy shape {nb.shape}")
    if valid.shape != (V,) or valid.dtype != np.bool_:
        problems.append(f"valid_vocab.npy must be bool [{V}], got {valid.dtype} {valid.shape}")
    if prior.shape != (V,):
        problems.append(f"unigram_prior.npy must be [{V}], got {prior.shape}")
    if not problems:
        if nb.min() < 0 or nb.max() >= V:
            problems.append("neighbors.npy holds ids outside [0, V)")
        elif (nb == np.arange(V)[:, None]).any():
            problems.append("neighbors.npy lists a token as its own neighbour")
        if (prior < 0).any() or abs(float(prior.sum()) - 1.0) > 1e-6:
            problems.append("unigram_prior.npy must be non-negative and sum to 1")
    if problems:
        raise ArtifactError(f"{directory}: " + "; ".join(problems))
    return NeighborTables(torch.from_numpy(nb.astype(np.int64)), torch.from_numpy(sims.astype(np.float32)),
                          torch.from_numpy(valid), torch.from_numpy(prior.astype(np.float64)), manifest)
