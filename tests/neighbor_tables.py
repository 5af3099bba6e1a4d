"""Neighbour tables for tests: two ways to make them and the one way to write them as an artifact.

* :func:`random_tables` — small random tables (a random permutation per row, self skipped; sorted
  similarities; [MASK] invalid; a random unigram prior) as torch tensors, for kernel/likelihood tests;
* :func:`shifted_tables` — row v lists the ``k`` next valid ids after v (cyclic, never v itself) with
  the same similarities on every row, as numpy arrays, for stage and export tests;
* :func:`write_neighbor_artifact` — a real "neighbor_index" artifact (``StageRun`` +
  ``write_neighbor_arrays``) from such tables; S+ (Eq 114) is computed by
  ``semantic_association_rows`` unless given, ``prior_support`` defaults to ``unigram_prior > 0``.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch


def random_tables(vocab: int, k: int, mask: int, seed: int = 0) -> dict:
    """A full neighbour table without self, sorted similarities, valid vocab without [MASK], a unigram prior."""
    g = torch.Generator().manual_seed(seed)
    nb = torch.stack([torch.randperm(vocab - 1, generator=g)[:k] for _ in range(vocab)])
    nb = nb + (nb >= torch.arange(vocab)[:, None]).long()  # skip the row token itself
    sims = torch.sort(torch.rand(vocab, k, generator=g), descending=True, dim=1).values
    valid = torch.ones(vocab, dtype=torch.bool)
    valid[mask] = False
    prior = torch.rand(vocab, generator=g, dtype=torch.float64) * valid
    return dict(neighbors=nb, similarities=sims, valid_vocab=valid, unigram_prior=prior / prior.sum())


def shifted_tables(valid: np.ndarray, k: int, similarities=(0.9, 0.5), prior: np.ndarray | None = None) -> dict:
    """Row v lists the ``k`` next valid ids after v (cyclic); ``similarities`` is a (first, last) linspace
    or one value per rank, the same on every row; the prior is ``prior`` (normalised) or uniform over
    the valid tokens."""
    valid = np.asarray(valid, dtype=bool)
    V = valid.size
    valid_ids = np.flatnonzero(valid)
    start = np.searchsorted(valid_ids, np.arange(V), side="right")  # first valid id after v
    cols = (start[:, None] + np.arange(k)[None, :]) % valid_ids.size
    sims = np.asarray(similarities, dtype=np.float32)
    if sims.shape == (2,) and k != 2:
        sims = np.linspace(similarities[0], similarities[1], k, dtype=np.float32)
    prior = valid.astype(np.float64) if prior is None else np.asarray(prior, dtype=np.float64)
    return dict(neighbors=valid_ids[cols].astype(np.int32), similarities=np.tile(sims, (V, 1)),
                valid_vocab=valid, unigram_prior=prior / prior.sum())


def _numpy(x) -> np.ndarray:
    return x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def neighbor_arrays(tables: Mapping[str, Any], assoc_k: int | None = None, min_sim: float = 0.0,
                    self_only_rows=None) -> dict[str, np.ndarray]:
    """All TABLE_FILES arrays (numpy) from a table dict holding at least neighbors, similarities,
    valid_vocab and unigram_prior (torch or numpy); missing ones are derived."""
    from pipeline.common.neighbor_artifact import semantic_association_rows

    arrays = {name: _numpy(value) for name, value in tables.items()}
    arrays.setdefault("prior_support", arrays["unigram_prior"] > 0)
    if "semantic_assoc_indices" not in arrays:
        k = arrays["neighbors"].shape[1] if assoc_k is None else assoc_k
        idx, w = semantic_association_rows(arrays["neighbors"], arrays["similarities"], k, min_sim, self_only_rows)
        arrays.update(semantic_assoc_indices=idx, semantic_assoc_weights=w)
    return arrays


def write_neighbor_artifact(out: str | Path, tables: Mapping[str, Any], *, assoc_k: int | None = None,
                            config: Mapping[str, Any] | None = None, tokenizer: Mapping[str, Any] | None = None,
                            upstream: Mapping[str, Path] | None = None, stage: str = "neighbor_index",
                            check: bool = True) -> Path:
    """Write ``tables`` as a complete artifact at ``out`` (the real writer, the real manifest).

    ``check=False`` saves the arrays without validation: a malformed artifact for refusal tests.
    """
    from pipeline.common.artifacts import StageRun
    from pipeline.common.neighbor_artifact import write_neighbor_arrays

    arrays = neighbor_arrays(tables, assoc_k)
    run = StageRun(stage, Path(out), config=dict(config or {"test": True}), upstream=dict(upstream or {}),
                   tokenizer=tokenizer)
    with run as tmp:
        if check:
            write_neighbor_arrays(tmp, arrays)
        else:
            for name, array in arrays.items():
                np.save(tmp / f"{name}.npy", array)
    return Path(out)


def make_test_kernel(preset: str, vocab: int, mask: int, tables: Mapping[str, Any] | None = None, **overrides):
    """``build_kernel`` of ``KernelConfig.preset(preset, **overrides)`` over ``tables`` (none: table-free)."""
    from pipeline.core.kernels import KernelConfig, build_kernel

    return build_kernel(KernelConfig.preset(preset, **overrides), vocab, mask_id=mask, **(tables or {}))
