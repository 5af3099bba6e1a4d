"""CLI of the neighbor_index stage.

    python -m neighbor_index --preprocessed DIR --out DIR [--k-max 64]
        [--embedder PATH_OR_ID | --embeddings-from-model PATH] [--index {flat,ivf,hnsw}]
        [--tau 1.0] [--min-count N] [--force]
    python -m neighbor_index verify DIR...   (exit 0 clean, 1 problems found; see python -m pipeline.verify)
"""
from __future__ import annotations

import argparse
import sys

from pipeline.common.artifacts import stage_errors
from pipeline.common.locks import add_break_lock_argument
from pipeline.common.neighbor_artifact import STAGE
from pipeline.common.verify import artifact_check, report

from .build import run_neighbor_index
from .config import INDEX_KINDS, NeighborIndexConfig

PROG = "python -m neighbor_index"


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Vocabulary embeddings -> top-k_max semantic "
                                "neighbour tables, sparse association S+ and unigram prior (Eq 117-119).")
    p.add_argument("--preprocessed", required=True, help="preprocess artifact directory")
    p.add_argument("--out", required=True, help="artifact directory to write")
    p.add_argument("--k-max", type=int, default=64, help="neighbours per token (default 64)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--embedder", default="default",
                     help="sentence-transformers path or hub id (default: offline all-MiniLM-L6-v2)")
    src.add_argument("--embeddings-from-model", metavar="PATH",
                     help="use the input-embedding matrix of an HF model dir or semdlm checkpoint/export")
    p.add_argument("--embedding-key", help="tensor name of that matrix (default: auto-detect)")
    p.add_argument("--index", choices=INDEX_KINDS, default="flat",
                   help="flat = exact (default); ivf / hnsw = approximate, recall@k reported")
    p.add_argument("--tau", type=float, default=1.0, help="Eq 119 exponent on unigram counts, in (0, 1]")
    p.add_argument("--min-count", type=int, default=1, help="prior support needs this train count")
    p.add_argument("--assoc-k", type=int, default=16, help="neighbours per row of the sparse S+ (Eq 114)")
    p.add_argument("--assoc-min-sim", type=float, default=0.0, help="S+ weights below this cosine become 0")
    p.add_argument("--ivf-nlist", type=int, default=0, help="IVF lists (0: 4*sqrt(valid tokens))")
    p.add_argument("--ivf-nprobe", type=int, default=32)
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--hnsw-ef-search", type=int, default=256)
    p.add_argument("--recall-sample", type=int, default=1000, help="rows for recall@k of ivf / hnsw")
    p.add_argument("--batch-size", type=int, default=1024, help="embedding batch size")
    p.add_argument("--threads", type=int, default=0, help="torch / faiss threads (0: all cores)")
    p.add_argument("--device", default="auto", help="embedding device: auto, cpu, cuda[:N]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="rebuild even if the artifact is up to date")
    add_break_lock_argument(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _verify_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=f"{PROG} verify", description="Check a neighbour artifact: every file "
                                "re-hashed, every table loaded and its shape checked (exit 0 clean, 1 problems).")
    p.add_argument("dirs", nargs="+", metavar="DIR")
    args = p.parse_args(argv)
    return report(f"{PROG} verify", args.dirs, artifact_check(stages=(STAGE,)))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["verify"]:
        return _verify_main(argv[1:])
    args = _build_parser().parse_args(argv)
    with stage_errors(PROG):
        cfg = NeighborIndexConfig(
            k_max=args.k_max, embedder=args.embedder, embeddings_from_model=args.embeddings_from_model,
            embedding_key=args.embedding_key, index=args.index, tau=args.tau, min_count=args.min_count,
            assoc_k=args.assoc_k, assoc_min_sim=args.assoc_min_sim, ivf_nlist=args.ivf_nlist,
            ivf_nprobe=args.ivf_nprobe, hnsw_m=args.hnsw_m, hnsw_ef_search=args.hnsw_ef_search,
            recall_sample=args.recall_sample, seed=args.seed, batch_size=args.batch_size,
            threads=args.threads, device=args.device, progress=not args.no_progress)
        run_neighbor_index(cfg, args.preprocessed, args.out, force=args.force, break_lock=args.break_lock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
