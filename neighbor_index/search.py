"""Top-k_max semantic neighbour tables (Eq 103 / 117's N_k(i)) and the sparse association S+ (Eq 114).

Every row of the table is full: row i holds the k_max valid tokens most similar to token i by
cosine, most similar first, never i itself — also for special, continuation and punctuation rows,
which are queried like any other token (their targets are still valid tokens), so a kernel never
needs a fallback for any token id.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Query rows per faiss call: bounds the [rows, k] result buffers and drives the progress bar.
_QUERY_CHUNK = 4096


@dataclass
class NeighborTables:
    neighbors: np.ndarray     # int32 [V, k]
    similarities: np.ndarray  # float32 [V, k]
    recall: float | None      # recall@k of an approximate index vs exact search (None for flat)
    recall_rows: int


def _make_index(database: np.ndarray, kind: str, *, ivf_nlist: int = 0, ivf_nprobe: int = 32,
                hnsw_m: int = 32, hnsw_ef_search: int = 256, seed: int = 0):
    import faiss

    d = database.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        nlist = ivf_nlist or max(1, int(4 * math.sqrt(len(database))))
        nlist = min(nlist, len(database))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(database)
        index.nprobe = min(ivf_nprobe, nlist)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = hnsw_ef_search
    else:
        raise ValueError(f"unknown index kind {kind!r}")
    index.add(database)
    return index


def _drop_self(row_ids: np.ndarray, cand_ids: np.ndarray, cand_sims: np.ndarray, k: int):
    """First k candidates of each row that are not the row token itself and not missing (-1).

    Candidates arrive sorted by similarity; a stable sort on "unusable" moves self/missing to the
    back without reordering the rest (self is matched by id, not by rank: a duplicate vector may
    outrank it).
    """
    unusable = (cand_ids == row_ids[:, None]) | (cand_ids < 0)
    order = np.argsort(unusable, axis=1, kind="stable")[:, :k]
    ids = np.take_along_axis(cand_ids, order, axis=1)
    sims = np.take_along_axis(cand_sims, order, axis=1)
    complete = ~np.take_along_axis(unusable, order, axis=1).any(axis=1)
    return ids, sims, complete


def _search_rows(index, queries: np.ndarray, row_ids: np.ndarray, valid_ids: np.ndarray, k: int):
    sims, pos = index.search(queries, k + 1)  # +1: a valid row finds itself
    cand = np.where(pos >= 0, valid_ids[np.clip(pos, 0, None)], -1)
    return _drop_self(row_ids, cand, sims, k)


def search_neighbors(emb: np.ndarray, valid: np.ndarray, k: int, kind: str = "flat", *,
                     threads: int | None = None, progress: bool = False, recall_sample: int = 1000,
                     seed: int = 0, **index_args) -> NeighborTables:
    """Top-k cosine neighbours among the ``valid`` tokens for every row of unit-norm ``emb``.

    ``kind="flat"`` is exact. For ``ivf``/``hnsw`` the rows whose approximate search came back
    short (faiss returns -1 when too few lists/nodes are visited) are redone exactly, and recall@k
    against exact search is measured on ``recall_sample`` random rows.
    """
    import faiss
    from tqdm.auto import tqdm

    emb = np.ascontiguousarray(emb, dtype=np.float32)
    valid = np.asarray(valid, dtype=bool)
    if emb.ndim != 2 or valid.shape != (len(emb),):
        raise ValueError(f"embeddings {emb.shape} and valid mask {valid.shape} do not match")
    valid_ids = np.flatnonzero(valid)
    if len(valid_ids) < k + 1:
        raise ValueError(f"only {len(valid_ids)} valid tokens: cannot fill {k} neighbours per row "
                         "(each row needs k valid tokens other than itself); lower --k-max")
    if threads:
        faiss.omp_set_num_threads(threads)
    index = _make_index(emb[valid_ids], kind, seed=seed, **index_args)
    exact = index if kind == "flat" else _make_index(emb[valid_ids], "flat")

    V = len(emb)
    neighbors = np.empty((V, k), dtype=np.int32)
    similarities = np.empty((V, k), dtype=np.float32)
    for start in tqdm(range(0, V, _QUERY_CHUNK), desc=f"faiss {kind} top-{k}", unit="chunk", disable=not progress):
        rows = np.arange(start, min(start + _QUERY_CHUNK, V))
        ids, sims, complete = _search_rows(index, emb[rows], rows, valid_ids, k)
        if not complete.all():  # approximate search came back short: redo those rows exactly
            redo = rows[~complete]
            ids[~complete], sims[~complete], _ = _search_rows(exact, emb[redo], redo, valid_ids, k)
        neighbors[rows], similarities[rows] = ids, sims

    recall, recall_rows = None, 0
    if kind != "flat":
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(V, size=min(recall_sample, V), replace=False))
        truth, _, _ = _search_rows(exact, emb[sample], sample, valid_ids, k)
        recall, recall_rows = recall_at_k(neighbors[sample], truth), len(sample)
    return NeighborTables(neighbors, similarities, recall, recall_rows)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row's true top-k that the approximate top-k contains."""
    k = truth.shape[1]
    hits = (found[:, :, None] == truth[:, None, :]).any(axis=2).sum()
    return float(hits) / (len(truth) * k)


def brute_force_neighbors(emb: np.ndarray, valid: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference implementation in plain numpy (dense V x V similarities): tests and small V only."""
    emb = np.asarray(emb, dtype=np.float64)
    sims = emb @ emb.T
    sims[:, ~np.asarray(valid, dtype=bool)] = -np.inf
    np.fill_diagonal(sims, -np.inf)
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return ids.astype(np.int32), np.take_along_axis(sims, ids, axis=1).astype(np.float32)
