"""Configuration of the neighbor_index stage: one validated dataclass."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from pipeline.common.devices import check_device_name

INDEX_KINDS = ("flat", "ivf", "hnsw")


@dataclass
class NeighborIndexConfig:
    """Everything that determines the bytes of a neighbor_index artifact, plus runtime knobs.

    ``batch_size``, ``threads``, ``device`` and ``progress`` change how fast the stage runs, not
    what it computes, so :meth:`artifact_config` (and with it the freshness key) leaves them out.
    """

    k_max: int = 64                          # neighbours stored per token (Eq 117's k_max)
    embedder: str = "default"                # sentence-transformers path / hub id; default = offline MiniLM
    embeddings_from_model: str | None = None  # HF model dir or semdlm checkpoint/export: input embeddings
    embedding_key: str | None = None         # tensor name in that checkpoint (default: auto-detect)
    index: str = "flat"                      # flat = exact; ivf / hnsw = approximate, recall reported
    tau: float = 1.0                         # Eq 119 temperature on the unigram counts, 0 < tau <= 1
    min_count: int = 1                       # prior support needs count >= min_count (Eq 119 "rare")
    assoc_k: int = 16                        # neighbours per row of the sparse S+ (Eq 114)
    assoc_min_sim: float = 0.0               # S+ weights below this cosine are set to 0
    ivf_nlist: int = 0                       # 0: 4 * sqrt(#valid tokens)
    ivf_nprobe: int = 32
    hnsw_m: int = 32
    hnsw_ef_search: int = 256
    recall_sample: int = 1000                # rows checked against exact search for ivf / hnsw
    seed: int = 0
    batch_size: int = 1024
    threads: int = 0                         # 0: os.cpu_count()
    device: str = "auto"                     # auto / cpu / cuda[:N] for the sentence-transformers pass
    progress: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.k_max, int) or self.k_max < 1:
            raise ValueError(f"--k-max must be a positive integer, got {self.k_max!r}")
        if self.index not in INDEX_KINDS:
            raise ValueError(f"--index must be one of {INDEX_KINDS}, got {self.index!r}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"--tau must be in (0, 1] (Eq 119), got {self.tau}")
        if self.min_count < 0:
            raise ValueError(f"--min-count must be >= 0, got {self.min_count}")
        if not 0 <= self.assoc_k <= self.k_max:
            raise ValueError(f"--assoc-k must be in [0, --k-max={self.k_max}], got {self.assoc_k}")
        if not -1.0 <= self.assoc_min_sim <= 1.0:
            raise ValueError(f"--assoc-min-sim must be a cosine in [-1, 1], got {self.assoc_min_sim}")
        for name in ("ivf_nprobe", "hnsw_m", "hnsw_ef_search", "recall_sample", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.ivf_nlist < 0 or self.threads < 0:
            raise ValueError("--ivf-nlist and --threads must be >= 0 (0 = automatic)")
        if self.embeddings_from_model is not None and self.embedder not in ("default", "", None):
            raise ValueError("give either --embedder or --embeddings-from-model, not both")
        if self.embedding_key is not None and self.embeddings_from_model is None:
            raise ValueError("--embedding-key only applies with --embeddings-from-model")
        check_device_name(self.device, allow_auto=True)

    @property
    def num_threads(self) -> int:
        return self.threads or os.cpu_count() or 1

    def artifact_config(self) -> dict:
        """The result-determining fields (what the manifest's config hash is taken of)."""
        cfg = asdict(self)
        for runtime_only in ("batch_size", "threads", "device", "progress"):
            cfg.pop(runtime_only)
        if self.index == "flat":
            cfg.pop("recall_sample")
        if self.index != "ivf":
            cfg.pop("ivf_nlist"), cfg.pop("ivf_nprobe")
        if self.index != "hnsw":
            cfg.pop("hnsw_m"), cfg.pop("hnsw_ef_search")
        return cfg
