"""Upstream artifacts of training (preprocess, neighbor_index), validated against each other.

The kernel is built from them by ``pipeline.core.kernels.make_kernel``, the factory export,
sampling and the diagnostics use too. The two artifacts are validated against each other before anything is
built: same tokenizer identity, a neighbour table present (and of the right vocabulary) whenever the
kernel needs one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.common.artifacts import ArtifactError, load_manifest, manifest_hash
from pipeline.common.neighbor_artifact import NeighborTables, load_neighbor_tables
from pipeline.core.kernels import KernelConfig


@dataclass
class UpstreamArtifacts:
    """The validated inputs of a training run."""

    preprocessed: Path
    manifest: dict
    neighbors: Path | None
    tables: NeighborTables | None

    @property
    def tokenizer(self) -> dict:
        return self.manifest["tokenizer"]

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer["vocab_size"])

    @property
    def seq_len(self) -> int:
        return int(self.manifest["seq_len"])

    @property
    def mask_id(self) -> int | None:
        return self.tokenizer.get("special_ids", {}).get("mask")

    @property
    def pad_id(self) -> int | None:
        return self.tokenizer.get("special_ids", {}).get("pad")

    def references(self) -> dict:
        """Absolute paths and manifest hashes, as recorded in exports and checkpoints."""
        refs = {"preprocessed": str(self.preprocessed.resolve()),
                "preprocessed_manifest_sha256": manifest_hash(self.preprocessed),
                "neighbors": None, "neighbors_manifest_sha256": None}
        if self.neighbors is not None:
            refs.update(neighbors=str(self.neighbors.resolve()),
                        neighbors_manifest_sha256=manifest_hash(self.neighbors))
        return refs


def load_upstream(preprocessed: str | Path, neighbors: str | Path | None, kernel_cfg: KernelConfig,
                  splits: tuple[str, ...] = ("train", "validation")) -> UpstreamArtifacts:
    """Load both manifests and check them against each other; ArtifactError/ValueError on mismatch."""
    preprocessed = Path(preprocessed)
    manifest = load_manifest(preprocessed, stage="preprocess")
    missing = [s for s in splits if s not in manifest.get("splits", [])]
    if missing:
        raise ArtifactError(f"{preprocessed}: split(s) {missing} missing (has {manifest.get('splits')}); "
                            "rerun preprocess with --valid-fraction or --valid-input")
    tables = None
    if neighbors is None and kernel_cfg.needs_neighbors:
        raise ValueError(f"kernel {kernel_cfg.name!r} needs a neighbour table: pass --neighbors DIR "
                         "(built by python -m neighbor_index --preprocessed DIR --out DIR)")
    if neighbors is not None:
        neighbors = Path(neighbors)
        tables = load_neighbor_tables(neighbors)
        ours = manifest["tokenizer"]["identity"]
        theirs = (tables.manifest.get("tokenizer") or {}).get("identity")
        if theirs != ours:
            raise ArtifactError(f"{neighbors}: tokenizer identity {theirs} does not match the preprocessed "
                                f"data's {ours} ({preprocessed}); rebuild the neighbour index from this data")
        if tables.vocab_size != int(manifest["tokenizer"]["vocab_size"]):
            raise ArtifactError(f"{neighbors}: table has {tables.vocab_size} rows, tokenizer has "
                                f"{manifest['tokenizer']['vocab_size']} tokens")
    return UpstreamArtifacts(preprocessed, manifest, neighbors, tables)

