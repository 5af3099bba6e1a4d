"""The neighbour-table artifact (stage "neighbor_index"): the one writer and the one reader.

Files (all ``.npy``, row v is vocabulary id v, V = vocabulary size):

* ``neighbors`` int32 [V, k_max]: most similar valid tokens first, never v itself, every row full;
* ``similarities`` float32 [V, k_max]: their cosine similarities;
* ``valid_vocab`` bool [V]: tokens a semantic kernel may move to; ``prior_support`` bool [V];
* ``unigram_prior`` float64 [V]: nu of Eq 119, sums to 1;
* ``semantic_assoc_indices`` int32 / ``semantic_assoc_weights`` float32 [V, 1 + assoc_k]: S+ of
  Eq 114 in row form, built by :func:`semantic_association_rows` (the only place S+ is built).

:func:`write_neighbor_arrays` writes them into a directory (``python -m neighbor_index`` calls it
inside its ``StageRun``; tests call it inside theirs); :func:`read_neighbor_arrays` gives validated
numpy arrays of a complete, manifest-checked artifact; :func:`load_neighbor_tables` the same as torch
tensors (:class:`NeighborTables`), which is what kernels and the samplers consume. An export carries a
byte-identical copy of the tables (pipeline/common/export_contents.py), read by the same functions with
the sha256s its config.json records (``recorded``) in place of the artifact's manifest. :data:`LOADS`
counts the reads per directory: a stage reads an artifact once per process.
"""
from __future__ import annotations

import hashlib
import io
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.common.artifacts import ArtifactError, load_manifest

if TYPE_CHECKING:  # torch is imported lazily: preprocess/neighbor_index need only the numpy side
    import torch

STAGE = "neighbor_index"
TABLE_FILES = ("neighbors", "similarities", "valid_vocab", "prior_support", "unigram_prior",
               "semantic_assoc_indices", "semantic_assoc_weights")
_DTYPES = {"neighbors": np.int32, "similarities": np.float32, "valid_vocab": np.bool_, "prior_support": np.bool_,
           "unigram_prior": np.float64, "semantic_assoc_indices": np.int32, "semantic_assoc_weights": np.float32}
REBUILD = "rebuild the artifact (python -m neighbor_index --force)"
REEXPORT = "re-export the run (python -m pipeline.export RUN_DIR --out DIR --force)"
LOADS: Counter[str] = Counter()  # resolved directory -> how many times this process read its tables


def semantic_association_rows(neighbors: np.ndarray, similarities: np.ndarray, assoc_k: int,
                              min_sim: float = 0.0, self_only_rows: np.ndarray | None = None
                              ) -> tuple[np.ndarray, np.ndarray]:
    """Sparse positive semantic association S+ of Eq 114, m(k) = sum_l S+(k, l) n(l), in fixed-row form.

    Returns ``indices`` int32 [V, 1 + assoc_k] and ``weights`` float32 [V, 1 + assoc_k] with
    S+(k, indices[k, j]) = weights[k, j] and S+ = 0 elsewhere:

    * column 0 is the diagonal, ``indices[k, 0] = k`` with weight cos(k, k) = 1 (so S+ = I, i.e.
      ``assoc_k = 0``, recovers the pure frequency penalty, as the paper notes);
    * columns 1..assoc_k are k's first ``assoc_k`` neighbours with weight max(cos, 0), set to 0
      below ``min_sim``;
    * rows in ``self_only_rows`` (special tokens: their "embedding" is of a placeholder string)
      keep only the diagonal.

    A consumer computes m for counts n [..., V] as ``(weights * n[..., indices]).sum(-1)``.
    """
    neighbors, similarities = np.asarray(neighbors), np.asarray(similarities)
    V = len(neighbors)
    indices = np.concatenate([np.arange(V, dtype=np.int32)[:, None], neighbors[:, :assoc_k].astype(np.int32)], axis=1)
    weights = np.concatenate([np.ones((V, 1), dtype=np.float32),
                              np.maximum(similarities[:, :assoc_k], 0.0).astype(np.float32)], axis=1)
    weights[:, 1:][similarities[:, :assoc_k] < min_sim] = 0.0
    if self_only_rows is not None:
        weights[np.asarray(self_only_rows, dtype=bool), 1:] = 0.0
    return indices, weights


def validate_neighbor_arrays(arrays: dict[str, np.ndarray], where: str) -> None:
    """Raise ArtifactError naming ``where`` unless ``arrays`` form a consistent neighbour artifact."""
    missing = [name for name in TABLE_FILES if name not in arrays]
    if missing:
        raise ArtifactError(f"{where}: missing {', '.join(f'{m}.npy' for m in missing)}")
    nb, sims = arrays["neighbors"], arrays["similarities"]
    prior = arrays["unigram_prior"]
    assoc_idx, assoc_w = arrays["semantic_assoc_indices"], arrays["semantic_assoc_weights"]
    V = nb.shape[0] if nb.ndim == 2 else -1
    problems = []
    if nb.ndim != 2 or not np.issubdtype(nb.dtype, np.integer):
        problems.append(f"neighbors.npy must be an integer [V, k] array, got {nb.dtype} {nb.shape}")
    if sims.shape != nb.shape:
        problems.append(f"similarities.npy shape {sims.shape} != neighbors.npy shape {nb.shape}")
    for name in ("valid_vocab", "prior_support"):
        if arrays[name].shape != (V,) or arrays[name].dtype != np.bool_:
            problems.append(f"{name}.npy must be bool [{V}], got {arrays[name].dtype} {arrays[name].shape}")
    if prior.shape != (V,):
        problems.append(f"unigram_prior.npy must be [{V}], got {prior.shape}")
    if assoc_idx.shape != assoc_w.shape or assoc_idx.ndim != 2 or assoc_idx.shape[0] != V:
        problems.append(f"semantic_assoc_indices/weights.npy must both be [{V}, J], got {assoc_idx.shape} "
                        f"and {assoc_w.shape}")
    if not problems:
        if nb.min() < 0 or nb.max() >= V:
            problems.append("neighbors.npy holds ids outside [0, V)")
        elif (nb == np.arange(V)[:, None]).any():
            problems.append("neighbors.npy lists a token as its own neighbour")
        if (prior < 0).any() or abs(float(prior.sum()) - 1.0) > 1e-6:
            problems.append("unigram_prior.npy must be non-negative and sum to 1")
        if assoc_idx.min() < 0 or assoc_idx.max() >= V or (assoc_w < 0).any():
            problems.append("semantic_assoc_*.npy must hold ids in [0, V) and weights >= 0")
    if problems:
        raise ArtifactError(f"{where}: " + "; ".join(problems))


def write_neighbor_arrays(directory: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Validate ``arrays`` (every name of TABLE_FILES) and save them in their artifact dtypes.

    ``directory`` is a stage's temporary directory (StageRun); the manifest is the caller's.
    """
    directory = Path(directory)
    arrays = {name: np.asarray(arrays[name]).astype(_DTYPES[name], copy=False) if name in arrays else None
              for name in TABLE_FILES}
    validate_neighbor_arrays({k: v for k, v in arrays.items() if v is not None}, str(directory))
    for name, array in arrays.items():
        np.save(directory / f"{name}.npy", array)


def read_neighbor_arrays(directory: str | os.PathLike, recorded: dict | None = None
                         ) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays by name, manifest) of a complete, validated neighbour artifact; ArtifactError otherwise.

    The tables are small (tens of MB for a 30k vocabulary), so every load also re-hashes them against the
    manifest: a flipped bit would otherwise change the kernel silently. ``recorded`` (file name ->
    {"sha256", "size"}, an export's copy of the tables) replaces the manifest: every file must be listed there.
    """
    directory = Path(directory)
    LOADS[str(directory.resolve())] += 1
    manifest = load_manifest(directory, stage=STAGE) if recorded is None else {"outputs": recorded}
    arrays = {}
    for name in TABLE_FILES:
        path = directory / f"{name}.npy"
        entry = manifest.get("outputs", {}).get(path.name)
        if recorded is not None and entry is None:
            raise ArtifactError(f"{path}: not among the tables recorded with it; {REEXPORT}")
        if path.is_file():
            arrays[name] = load_table(path, entry, REBUILD if recorded is None else REEXPORT)
    validate_neighbor_arrays(arrays, str(directory))
    return arrays, manifest


def load_table(path: Path, recorded: dict | None = None, fix: str = REBUILD) -> np.ndarray:
    """One ``.npy`` table (no pickles), checked against its manifest entry; ArtifactError naming the file
    and ``fix``, how to repair it."""
    data = path.read_bytes()
    if recorded is not None and hashlib.sha256(data).hexdigest() != recorded["sha256"]:
        raise ArtifactError(f"{path} is corrupt: its sha256 differs from the one recorded with it (changed "
                            f"after it was written); {fix}")
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ArtifactError(f"{path} is not a readable .npy table ({exc}); {fix}") from exc


@dataclass(frozen=True)
class NeighborTables:
    """A neighbour artifact as CPU torch tensors, plus the manifest it came with."""

    neighbors: torch.Tensor  # long [V, k_max]
    similarities: torch.Tensor  # float32 [V, k_max]
    valid_vocab: torch.Tensor  # bool [V]
    unigram_prior: torch.Tensor  # float64 [V]
    assoc_indices: torch.Tensor  # long [V, 1 + assoc_k]: S+ in row form (Eq 114)
    assoc_weights: torch.Tensor  # float32 [V, 1 + assoc_k]
    manifest: dict

    @property
    def vocab_size(self) -> int:
        return self.neighbors.shape[0]

    @property
    def k_max(self) -> int:
        return self.neighbors.shape[1]

    def kernel_inputs(self, device=None) -> dict:
        """Keyword arguments of ``pipeline.core.kernels.build_kernel`` (neighbour-related ones)."""
        device = device or "cpu"
        return {"neighbors": self.neighbors.to(device), "similarities": self.similarities.to(device),
                "valid_vocab": self.valid_vocab.to(device), "unigram_prior": self.unigram_prior.to(device)}


def load_neighbor_tables(directory: str | os.PathLike, recorded: dict | None = None) -> NeighborTables:
    """The torch view of :func:`read_neighbor_arrays`."""
    import torch

    arrays, manifest = read_neighbor_arrays(directory, recorded)
    as_t = lambda name, dtype: torch.from_numpy(arrays[name].astype(dtype))  # noqa: E731
    return NeighborTables(as_t("neighbors", np.int64), as_t("similarities", np.float32),
                          torch.from_numpy(arrays["valid_vocab"]), as_t("unigram_prior", np.float64),
                          as_t("semantic_assoc_indices", np.int64), as_t("semantic_assoc_weights", np.float32),
                          manifest)
