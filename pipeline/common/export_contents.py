"""What an export carries so that sampling, evaluation and transformers need nothing but its directory.

config.json of an export (pipeline/common/export_artifact.py) holds, next to the absolute paths of the
artifacts the run was trained on (``artifacts``, provenance only):

* ``data``: how the training data was packed, read from the preprocess manifest at export time:
  ``seq_len``, ``mode``, ``wrap``, ``text_field``, ``special_ids`` and ``tokenizer`` (the preprocess
  stage's name for it) — the default sequence length of the samplers, the document end of
  ``--stop-at-eos``, the packing of a raw ``--eval-set``;
* ``neighbor_tables``: ``{"dir": "neighbors", "files": {NAME.npy: {"sha256", "size"}}}``, a byte-identical
  copy of the neighbour artifact's tables (every ``TABLE_FILES`` array: the k-NN table and its
  similarities, the valid vocabulary, the unigram prior nu, S+ of the Eq 23 penalty) under ``dir``; the
  reader re-hashes every file against these sha256s (also the export manifest's). Any export that names a
  neighbour artifact carries it: every diffusion kernel reads the valid vocabulary and nu from it;
* ``tokenizer.shipped``: true when the tokenizer files are in the directory; they are what decodes.

An export written before these fields ("old export") is read as before: the recorded paths, and with
its preprocessed data gone, the samplers' 128-token default after a one-line warning on stderr.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from pipeline.common.artifacts import ArtifactError, ConfigError, load_manifest
from pipeline.common.neighbor_artifact import TABLE_FILES, NeighborTables, load_neighbor_tables

TABLES_DIR = "neighbors"
DATA_FIELDS = ("seq_len", "mode", "wrap", "text_field", "special_ids", "tokenizer")


# --------------------------------------------------------------------------- writing (export time)
def data_record(preprocessed) -> dict | None:
    """The ``data`` field of an export trained on the preprocess artifact ``preprocessed`` (None: none named)."""
    return _data_fields(load_manifest(preprocessed, check_files=False)) if preprocessed else None


def _data_fields(manifest: dict) -> dict:
    cfg = manifest.get("config") or {}
    seq_len = cfg.get("seq_len", manifest.get("seq_len"))
    return {"seq_len": None if seq_len is None else int(seq_len), "mode": cfg.get("mode"),
            "wrap": bool(cfg.get("wrap")), "text_field": cfg.get("text_field", "text"),
            "special_ids": dict(manifest.get("special_ids") or {}), "tokenizer": cfg.get("tokenizer")}


def tables_record(neighbors) -> dict | None:
    """The ``neighbor_tables`` field for the neighbour artifact ``neighbors``: its tables' sha256s and sizes
    as its manifest records them (None: no artifact named)."""
    if not neighbors:
        return None
    outputs = load_manifest(neighbors, stage="neighbor_index", check_files=False).get("outputs") or {}
    files = {f"{name}.npy": outputs.get(f"{name}.npy") for name in TABLE_FILES}
    missing = sorted(name for name, entry in files.items() if entry is None)
    if missing:
        raise ArtifactError(f"{neighbors}: its manifest lists no {', '.join(missing)}; rebuild it "
                            "(python -m neighbor_index --force)")
    return {"dir": TABLES_DIR, "files": {name: {"sha256": e["sha256"], "size": e["size"]} for name, e in files.items()}}


def copy_tables(record: dict, source, out_dir: Path) -> None:
    """Copy the tables of ``record`` (:func:`tables_record`) from ``source`` into ``out_dir``/record["dir"],
    each checked against its sha256 on the way: a corrupt source is refused, never shipped."""
    target = Path(out_dir) / record["dir"]
    target.mkdir(parents=True, exist_ok=True)
    for name, entry in record["files"].items():
        src, dst = Path(source) / name, target / name
        digest = hashlib.sha256()
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            while chunk := fin.read(1 << 22):
                digest.update(chunk)
                fout.write(chunk)
        if digest.hexdigest() != entry["sha256"]:
            raise ArtifactError(f"{src} is corrupt: its sha256 differs from the one its manifest records; rebuild "
                                "the artifact (python -m neighbor_index --force)")


# --------------------------------------------------------------------------- reading
def export_tables(directory, config: dict) -> NeighborTables | None:
    """The neighbour tables of the export ``directory``: its own copy, else (an old export) the artifact its
    config names; None when it has neither."""
    record = config.get("neighbor_tables")
    if record:
        return load_neighbor_tables(Path(directory) / record["dir"], recorded=record["files"])
    path = (config.get("artifacts") or {}).get("neighbors")
    return load_neighbor_tables(path) if path else None


def data_settings(config: dict) -> dict | None:
    """The export's ``data`` field; for an old export the same fields read from the preprocess manifest it
    names (None when it names none or that is unreadable)."""
    if config.get("data"):
        return config["data"]
    path = (config.get("artifacts") or {}).get("preprocessed")
    try:  # read as before this field existed: the raw manifest, whatever its checksum says
        return _data_fields(json.loads((Path(path) / "manifest.json").read_text())) if path else None
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def data_seq_len(config: dict) -> int | None:
    """The sequence length of the data the export was trained on (None: unknown, see :func:`warn_unknown_seq_len`)."""
    return (data_settings(config) or {}).get("seq_len")


def warn_unknown_seq_len(config: dict, fallback: int) -> None:
    """One line on stderr: the export records no sequence length and its preprocessed data is unreadable."""
    path = (config.get("artifacts") or {}).get("preprocessed")
    where = f"its preprocessed data {path} is unreadable" if path else "it names no preprocessed data"
    print(f"warning: the export's config.json records no data seq_len (an export older than self-contained "
          f"exports) and {where}: sequences of {fallback} tokens; pass --seq-len or re-export", file=sys.stderr)


def default_test_split(config: dict) -> Path | None:
    """The test split of the export's preprocessed data (None: it names none); ConfigError when it is gone."""
    path = (config.get("artifacts") or {}).get("preprocessed")
    if not path:
        return None
    split = Path(path) / "test"
    if not (split / "index.json").is_file():
        raise ConfigError(f"the export's test split {split} is gone (the preprocessed data it was trained on is "
                          "not on this machine): pass --test-split DIR, or --no-nelbo (--eval-set sets are scored "
                          "either way)")
    return split


def tokenizer_source(directory, config: dict) -> str | None:
    """What loads the export's tokenizer: its own directory when it ships the files, else the recorded name."""
    tokenizer = config.get("tokenizer") or {}
    return str(directory) if tokenizer.get("shipped") else tokenizer.get("name_or_path")
