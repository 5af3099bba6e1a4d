"""The neighbor_index stage: preprocess artifact -> neighbour tables, S+, unigram prior, report."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.common.artifacts import ArtifactError, StageRun, load_manifest
from pipeline.common.devices import check_device_available
from pipeline.common.hf_assets import resolve_name
from pipeline.common.neighbor_artifact import STAGE, semantic_association_rows, write_neighbor_arrays

from .config import NeighborIndexConfig
from .embed import embed_texts, find_embedding_tensor, load_embedding_matrix, model_weight_files
from .prior import prior_support, unigram_prior
from .report import render_report
from .search import search_neighbors
from .vocab import (
    Vocabulary,
    check_identity,
    classify_tokens,
    has_tokenizer,
    model_vocab_identity,
    surface_form,
    upstream_vocabulary,
    vocabulary_from_tokenizer,
)

SCHEMA_VERSION = 1


@dataclass
class EmbeddingSource:
    """What will produce the embeddings, resolved and vocabulary-checked before any embedding work."""

    kind: str                       # "sentence-transformers" or "model-input-embeddings"
    name: str                       # model path / hub id, plus tensor key for checkpoints
    vocab: Vocabulary
    vocab_check: str                # "identity" or "size-only"
    weight_files: list[Path] = field(default_factory=list)
    tensor: object = None           # EmbeddingTensor for checkpoints


def resolve_embedding_source(cfg: NeighborIndexConfig, tok_info: dict) -> EmbeddingSource:
    """Pick the embedder and refuse it when its vocabulary is not the preprocess artifact's."""
    vocab_size = int(tok_info["vocab_size"])
    if cfg.embeddings_from_model is None:
        name = resolve_name(cfg.embedder)
        try:
            vocab = vocabulary_from_tokenizer(name)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read the vocabulary of embedder {name!r}: {exc}") from None
        check_identity(tok_info, vocab.identity, f"tokenizer of embedder {name!r}", "embedder")
        return EmbeddingSource("sentence-transformers", name, vocab, "identity", model_weight_files(name))

    path = Path(cfg.embeddings_from_model)
    if not path.exists():
        raise FileNotFoundError(f"--embeddings-from-model {str(path)!r} does not exist")
    identity, where = model_vocab_identity(path)
    check_identity(tok_info, identity, where, "model")
    tensor = find_embedding_tensor(path, vocab_size, cfg.embedding_key)  # headers only
    directory = path if path.is_dir() else path.parent
    vocab = vocabulary_from_tokenizer(str(directory)) if has_tokenizer(directory) else upstream_vocabulary(tok_info)
    if identity is None:
        print(f"{STAGE}: warning: {str(path)!r} carries no tokenizer or tokenizer identity; only the "
              f"vocabulary size ({vocab_size}) could be checked", file=sys.stderr)
    return EmbeddingSource("model-input-embeddings", f"{path}:{tensor.key}", vocab,
                           "identity" if identity else "size-only", [tensor.file], tensor)


def compute_embeddings(source: EmbeddingSource, cfg: NeighborIndexConfig) -> np.ndarray:
    if source.kind == "sentence-transformers":
        texts = [surface_form(t) for t in source.vocab.tokens]
        return embed_texts(texts, source.name, batch_size=cfg.batch_size, device=cfg.device,
                           threads=cfg.num_threads, progress=cfg.progress)
    return load_embedding_matrix(source.tensor)


def run_neighbor_index(cfg: NeighborIndexConfig, preprocessed: str | Path, out: str | Path,
                       force: bool = False, break_lock: bool = False) -> Path:
    """Build (or find up to date) the neighbor_index artifact ``out`` from a preprocess artifact."""
    preprocessed, out = Path(preprocessed), Path(out)
    upstream = load_manifest(preprocessed, stage="preprocess")
    tok_info = upstream.get("tokenizer")
    if not tok_info or "identity" not in tok_info:
        raise ArtifactError(f"{str(preprocessed)!r}: the preprocess manifest records no tokenizer identity")
    counts = np.load(preprocessed / "unigram_counts.npy", allow_pickle=False)
    if counts.shape != (tok_info["vocab_size"],):
        raise ArtifactError(f"{str(preprocessed)!r}: unigram_counts.npy has shape {counts.shape}, "
                            f"expected ({tok_info['vocab_size']},)")

    source = resolve_embedding_source(cfg, tok_info)
    run = StageRun(STAGE, out, config=cfg.artifact_config(), inputs=source.weight_files,
                   upstream={"preprocessed": preprocessed}, tokenizer=tok_info,
                   schema_version=SCHEMA_VERSION, force=force, break_lock=break_lock)
    if run.is_up_to_date():
        print(f"{out}: up to date")
        return out

    check_device_available(cfg.device)
    with run.locked():  # before the embedding work: a second job on ``out`` stops here
        _build_artifact(run, cfg, source, tok_info, counts)
    return out


def _build_artifact(run: StageRun, cfg: NeighborIndexConfig, source: EmbeddingSource, tok_info: dict,
                    counts: np.ndarray) -> None:
    out = run.out_dir
    tokens = source.vocab.tokens
    special_ids = set(source.vocab.special_ids.values()) | set(tok_info.get("special_ids", {}).values())
    classes = classify_tokens(tokens, special_ids)
    support = prior_support(classes.valid, counts, cfg.min_count)
    prior = unigram_prior(counts, support, cfg.tau)  # before the expensive part: fails fast when empty

    t0 = time.perf_counter()
    emb = compute_embeddings(source, cfg)
    t1 = time.perf_counter()
    tables = search_neighbors(emb, classes.valid, cfg.k_max, cfg.index, threads=cfg.num_threads,
                              progress=cfg.progress, recall_sample=cfg.recall_sample, seed=cfg.seed,
                              **_index_args(cfg))
    t2 = time.perf_counter()
    assoc_idx, assoc_w = semantic_association_rows(tables.neighbors, tables.similarities, cfg.assoc_k,
                                              cfg.assoc_min_sim, self_only_rows=classes.special)
    stats = {"vocab_size": len(tokens), "embedding_source": f"{source.kind} {source.name}",
             "embedding_dim": int(emb.shape[1]), "vocab_check": source.vocab_check, "index": cfg.index,
             "k_max": cfg.k_max, "recall": tables.recall, "recall_rows": tables.recall_rows,
             "embed_seconds": round(t1 - t0, 3), "search_seconds": round(t2 - t1, 3),
             "valid_tokens": int(classes.valid.sum()), "prior_support": int(support.sum()),
             "special_tokens": int(classes.special.sum()), "continuation_tokens": int(classes.continuation.sum()),
             "punctuation_tokens": int(classes.punctuation.sum()), "min_count": cfg.min_count, "tau": cfg.tau}
    with run as tmp:
        write_neighbor_arrays(tmp, {"neighbors": tables.neighbors, "similarities": tables.similarities,
                                    "valid_vocab": classes.valid, "prior_support": support, "unigram_prior": prior,
                                    "semantic_assoc_indices": assoc_idx, "semantic_assoc_weights": assoc_w})
        (tmp / "report.md").write_text(render_report(
            tokens=tokens, neighbors=tables.neighbors, similarities=tables.similarities, classes=classes,
            support=support, counts=counts, prior=prior, stats=stats, seed=cfg.seed), encoding="utf-8")
        run.extra["stats"] = stats
        run.extra["runtime"] = {"threads": cfg.num_threads, "device": cfg.device, "batch_size": cfg.batch_size}
    print(f"{out}: {len(tokens)} tokens, top-{cfg.k_max} neighbours ({cfg.index}), embedding "
          f"{stats['embed_seconds']:.1f} s, search {stats['search_seconds']:.1f} s")


def _index_args(cfg: NeighborIndexConfig) -> dict:
    if cfg.index == "ivf":
        return {"ivf_nlist": cfg.ivf_nlist, "ivf_nprobe": cfg.ivf_nprobe}
    if cfg.index == "hnsw":
        return {"hnsw_m": cfg.hnsw_m, "hnsw_ef_search": cfg.hnsw_ef_search}
    return {}
