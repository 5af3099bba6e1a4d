"""Diversity and basin metrics of generated token sequences (lists of ids, one list per sample).

* unigram entropy (nats) of each sample's token histogram, H = -sum_k p_k log p_k; samples below
  :data:`ENTROPY_THRESHOLD` = 4.8 are flagged (the paper's collapsed / semantic-basin regime);
* distinct-n: unique n-grams / n-grams, per sample (mean) and pooled over all samples;
* repetition rate: share of positions whose token already occurs among the ``window`` tokens before;
* semantic-basin rate: share of nearby token pairs (distance 1..``window``, different tokens)
  where one token is among the other's ``basin_k`` nearest neighbours in the neighbour table.
"""
from __future__ import annotations

import math
from collections import Counter

import torch

ENTROPY_THRESHOLD = 4.8


def unigram_entropy(ids: list[int]) -> float:
    """Entropy in nats of the empirical token distribution of one sample."""
    if not ids:
        return 0.0
    counts = torch.tensor(list(Counter(ids).values()), dtype=torch.float64)
    p = counts / counts.sum()
    return float(-(p * p.log()).sum())


def ngrams(ids: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]


def distinct_n(ids: list[int], n: int) -> float:
    """Unique n-grams / total n-grams of one sample (0 when it has none)."""
    grams = ngrams(ids, n)
    return len(set(grams)) / len(grams) if grams else 0.0


def pooled_distinct_n(samples: list[list[int]], n: int) -> float:
    """Unique n-grams over all samples / all n-grams (n-grams never cross sample boundaries)."""
    grams = [g for ids in samples for g in ngrams(ids, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _padded(samples: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    L = max((len(s) for s in samples), default=0)
    ids = torch.full((len(samples), L), -1, dtype=torch.long)
    for i, s in enumerate(samples):  # one loop over samples to pack them; the metrics are vectorised
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return ids, ids >= 0


def repetition_rate(samples: list[list[int]], window: int = 16) -> float:
    """Share of positions i >= 1 whose token equals one of the ``window`` tokens before it."""
    ids, real = _padded(samples)
    repeated = torch.zeros_like(real)
    for d in range(1, window + 1):  # loop over offsets, each vectorised over [N, L]
        repeated[:, d:] |= (ids[:, d:] == ids[:, :-d]) & real[:, d:] & real[:, :-d]
    counted = real.clone()
    counted[:, 0] = False
    total = int(counted.sum())
    return int((repeated & counted).sum()) / total if total else 0.0


def semantic_basin_rate(samples: list[list[int]], neighbors: torch.Tensor, window: int = 4,
                        basin_k: int = 8) -> float:
    """Share of pairs (i, i + d), 1 <= d <= window, of different tokens that are table neighbours."""
    ids, real = _padded(samples)
    table = neighbors[:, :basin_k].long()
    V = table.shape[0]
    hits, total = 0, 0
    for d in range(1, window + 1):
        a, b = ids[:, :-d], ids[:, d:]
        ok = real[:, :-d] & real[:, d:] & (a != b) & (a < V) & (b < V)
        a, b = a[ok], b[ok]
        near = (table[a] == b.unsqueeze(-1)).any(-1) | (table[b] == a.unsqueeze(-1)).any(-1)
        hits += int(near.sum())
        total += int(ok.sum())
    return hits / total if total else 0.0


def sample_metrics(samples: list[list[int]], neighbors: torch.Tensor | None = None, window: int = 16,
                   basin_window: int = 4, basin_k: int = 8) -> dict:
    """All diversity metrics of a set of samples (per-sample lists + aggregates)."""
    entropies = [unigram_entropy(s) for s in samples]
    out = {
        "num_samples": len(samples),
        "entropy_per_sample": entropies,
        "entropy_mean": sum(entropies) / len(entropies) if entropies else math.nan,
        "entropy_threshold": ENTROPY_THRESHOLD,
        "low_entropy_samples": [i for i, h in enumerate(entropies) if h < ENTROPY_THRESHOLD],
        "repetition_rate": repetition_rate(samples, window),
    }
    for n in (1, 2, 3):
        per = [distinct_n(s, n) for s in samples]
        out[f"distinct_{n}"] = sum(per) / len(per) if per else math.nan
        out[f"distinct_{n}_pooled"] = pooled_distinct_n(samples, n)
    out["low_entropy_share"] = len(out["low_entropy_samples"]) / len(samples) if samples else math.nan
    if neighbors is not None:
        out["semantic_basin_rate"] = semantic_basin_rate(samples, neighbors, basin_window, basin_k)
    return out
