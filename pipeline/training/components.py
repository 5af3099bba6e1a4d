"""Upstream artifacts of training (preprocess, neighbor_index), validated against each other.

The kernel is built from them by ``pipeline.core.kernels.make_kernel``, the factory export,
sampling and the diagnostics use too. The two artifacts are validated against each other before anything is
built: same tokenizer identity, a neighbour table present (and of the right vocabulary) whenever the
kernel needs one. With several data streams (pipeline/training/streams.py) the first train stream is
"the" preprocess artifact: its manifest gives the tokenizer and seq_len (every stream must agree) and
its directory is what checkpoints and exports record as ``preprocessed``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.common.artifacts import ArtifactError, load_manifest, manifest_hash
from pipeline.common.neighbor_artifact import NeighborTables, load_neighbor_tables
from pipeline.core.kernels import KernelConfig
from pipeline.training.streams import DataSpec, StreamSpec, check_streams, fetch_manifest


@dataclass
class UpstreamArtifacts:
    """The validated inputs of a training run."""

    preprocessed: Path
    manifest: dict
    neighbors: Path | None
    tables: NeighborTables | None
    # data.streams runs: the manifest of each train / validation stream, in order (empty for --preprocessed)
    train_streams: list[tuple[StreamSpec, dict]] = field(default_factory=list)
    validation_streams: list[tuple[StreamSpec, dict]] = field(default_factory=list)

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

    def clean_support(self, mode: str) -> np.ndarray | None:
        """Bool [V] of the tokens the model may read as clean (pipeline/core/posterior.py), None for ``all``.

        ``special``: [PAD], [MASK] and the placeholders [unusedN] are out unless the training data holds them
        (the primary stream's unigram counts; without them, out regardless); ``observed``: what those
        counts hold.
        """
        from pipeline.core.posterior import clean_support_mask

        if mode == "all":
            return None
        counts = self.unigram_counts("clean_support=observed" if mode == "observed" else None)
        if counts is None:
            counts = np.zeros(self.vocab_size, dtype=np.int64)
        special = [i for i in (self.mask_id, self.pad_id) if i is not None]
        return clean_support_mask(mode, counts, special, placeholder_ids(self.tokenizer.get("name_or_path")))

    def unigram_counts(self, needed_by: str | None = None, hint: str = "") -> np.ndarray | None:
        """Int [V] unigram counts of the primary stream's training split, shape-checked; when the artifact has
        none: None, or one line naming ``needed_by`` (and ``hint``) when something needs them."""
        path = self.preprocessed / "unigram_counts.npy"
        if not path.is_file():
            if needed_by is None:
                return None
            raise ArtifactError(f"{needed_by} needs {path} (the training data's unigram counts){hint}")
        counts = np.load(path, allow_pickle=False)
        if counts.shape != (self.vocab_size,):
            raise ArtifactError(f"{path} has shape {counts.shape}, expected ({self.vocab_size},)")
        return counts

    def unigram_log_prior(self):
        """Float[V] log p_unigram of the training data (the evaluation's smoothed reference, baselines.py):
        where ``head_init=unigram`` starts the output."""
        import torch

        from pipeline.evaluation.baselines import unigram_log_probs

        counts = self.unigram_counts("head_init=unigram", "; set head_init=zero to start from a uniform output")
        return torch.from_numpy(unigram_log_probs(counts)).float()

    def references(self) -> dict:
        """Absolute paths and manifest hashes, as recorded in exports and checkpoints."""
        refs = {"preprocessed": str(self.preprocessed.resolve()),
                "preprocessed_manifest_sha256": manifest_hash(self.preprocessed),
                "neighbors": None, "neighbors_manifest_sha256": None}
        if self.neighbors is not None:
            refs.update(neighbors=str(self.neighbors.resolve()),
                        neighbors_manifest_sha256=manifest_hash(self.neighbors))
        separate = [s for s, _ in self.validation_streams] != [s for s, _ in self.train_streams]
        for key, pairs in (("streams", self.train_streams), ("validation_streams", self.validation_streams)):
            if pairs and (key == "streams" or separate):
                refs[key] = [{**spec.to_dict(), "manifest_sha256": manifest_hash(spec.local)} for spec, _ in pairs]
        return refs


def placeholder_ids(tokenizer: str | None) -> list[int]:
    """Ids of the tokenizer's placeholder tokens ([unusedN] in BERT's vocabulary): never written into text."""
    from pipeline.common.hf_assets import PLACEHOLDER_TOKEN, load_tokenizer_spec

    return [i for token, i in load_tokenizer_spec(tokenizer).vocab.items() if PLACEHOLDER_TOKEN.match(token)]


def load_upstream(preprocessed: str | Path, neighbors: str | Path | None, kernel_cfg: KernelConfig,
                  splits: tuple[str, ...] = ("train", "validation")) -> UpstreamArtifacts:
    """Load both manifests and check them against each other; ArtifactError/ValueError on mismatch."""
    preprocessed = Path(preprocessed)
    manifest = load_manifest(preprocessed, stage="preprocess")
    missing = [s for s in splits if s not in manifest.get("splits", [])]
    if missing:
        raise ArtifactError(f"{preprocessed}: split(s) {missing} missing (has {manifest.get('splits')}); "
                            "rerun preprocess with --valid-fraction or --valid-input")
    return UpstreamArtifacts(preprocessed, manifest, *_neighbors(manifest, preprocessed, neighbors, kernel_cfg))


def load_data_upstream(data: DataSpec, neighbors: str | Path | None, kernel_cfg: KernelConfig,
                       timeout: float | None = None) -> UpstreamArtifacts:
    """Every stream's manifest (remote ones downloaded into their cache), checked against each other and
    against the neighbour artifact; ArtifactError/ValueError naming the stream on a mismatch."""
    if not data.from_streams and data.validation == data.streams:  # --preprocessed: as before streams
        return load_upstream(data.streams[0].local, neighbors, kernel_cfg)
    timeout = data.download_timeout if timeout is None else timeout
    fetched: dict[StreamSpec, tuple[dict, Path]] = {}
    for spec in (*data.streams, *data.validation):
        if spec not in fetched:
            fetched[spec] = fetch_manifest(spec, timeout)
    train = [(s, fetched[s][0]) for s in data.streams]
    validation = [(s, fetched[s][0]) for s in data.validation]
    check_streams(train, validation)
    manifest, directory = fetched[data.streams[0]]
    return UpstreamArtifacts(directory, manifest, *_neighbors(manifest, directory, neighbors, kernel_cfg),
                             train_streams=train, validation_streams=validation)


def _neighbors(manifest: dict, preprocessed: Path, neighbors: str | Path | None, kernel_cfg: KernelConfig):
    """(neighbour directory, its tables) checked against the preprocess manifest; (None, None) without."""
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
    return neighbors, tables
