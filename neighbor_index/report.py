"""report.md of a neighbor_index artifact: sample neighbours, similarity histogram, coverage."""
from __future__ import annotations

import numpy as np

PROBE_TOKENS = ("king", "good", "run", "paris", "three", "computer", "happy", ".", "##ing", "[MASK]")
_SHOWN_NEIGHBORS = 8


def _fmt_row(tokens: list[str], neighbors: np.ndarray, sims: np.ndarray, i: int) -> str:
    shown = zip(neighbors[i, :_SHOWN_NEIGHBORS], sims[i, :_SHOWN_NEIGHBORS])
    pairs = ", ".join(f"`{tokens[j]}` {s:.2f}" for j, s in shown)
    return f"| `{tokens[i]}` ({i}) | {pairs} |"


def _histogram(values: np.ndarray, edges: np.ndarray) -> list[str]:
    counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
    frac = counts / max(counts.sum(), 1)
    return [f"| [{lo:+.1f}, {hi:+.1f}) | {c} | {f:.1%} {'#' * int(round(40 * f))} |"
            for lo, hi, c, f in zip(edges[:-1], edges[1:], counts, frac)]


def render_report(*, tokens: list[str], neighbors: np.ndarray, similarities: np.ndarray, classes,
                  support: np.ndarray, counts: np.ndarray, prior: np.ndarray, stats: dict, seed: int = 0) -> str:
    V, k = neighbors.shape
    valid = classes.valid
    total = max(int(counts.sum()), 1)
    used_targets = np.unique(neighbors).size
    lines = [
        "# neighbor_index report", "",
        f"- vocabulary: {V} tokens; embeddings: {stats['embedding_source']} (dim {stats['embedding_dim']})",
        f"- neighbours: top-{k} by cosine, index `{stats['index']}`"
        + (f", recall@{k} vs exact on {stats['recall_rows']} rows: {stats['recall']:.4f}"
           if stats.get("recall") is not None else " (exact)"),
        f"- time: embedding {stats['embed_seconds']:.1f} s, search {stats['search_seconds']:.1f} s", "",
        "## Coverage", "",
        "| set | tokens | share of train tokens |", "|---|---:|---:|",
        *(f"| {name} | {int(rows.sum())} | {counts[rows].sum() / total:.2%} |" for name, rows in (
            ("special ([PAD] [CLS] [SEP] [MASK] [UNK], [unusedN])", classes.special),
            ("continuation pieces (##x)", classes.continuation),
            ("punctuation-only (no letter/digit)", classes.punctuation),
            ("**valid** (neighbour targets)", valid),
            (f"prior support (valid, count >= {stats['min_count']})", support))),
        "",
        f"- distinct tokens used as neighbours: {used_targets} of {int(valid.sum())} valid",
        f"- train tokens counted: {int(counts.sum())}; prior tau = {stats['tau']}, "
        f"largest prior mass {prior.max():.4f} (`{tokens[int(prior.argmax())]}`)", "",
        "## Similarity histogram", "",
        "Cosine of the nearest (rank 1) and the farthest stored (rank k_max) neighbour, over all rows.", "",
        "| cosine | rank-1 rows | share |", "|---|---:|---|",
        *_histogram(similarities[:, 0], np.linspace(-0.2, 1.0, 13)), "",
        f"| cosine | rank-{k} rows | share |", "|---|---:|---|",
        *_histogram(similarities[:, -1], np.linspace(-0.2, 1.0, 13)), "",
        "## Sample neighbours", "",
        f"| token (id) | first {min(k, _SHOWN_NEIGHBORS)} neighbours, cosine |", "|---|---|",
    ]
    index = {t: i for i, t in enumerate(tokens)}
    probes = [index[t] for t in PROBE_TOKENS if t in index]
    rng = np.random.default_rng(seed)
    frequent = np.flatnonzero(support)
    if len(frequent):
        probes += rng.choice(frequent, size=min(8, len(frequent)), replace=False).tolist()
    lines += [_fmt_row(tokens, neighbors, similarities, i) for i in probes]
    return "\n".join(lines) + "\n"
