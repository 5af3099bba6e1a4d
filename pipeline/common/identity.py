"""What names an artifact's inputs and outputs: canonical JSON and its hash, file sha256, the quick
fingerprint of an input file, a tokenizer's identity and the code version (re-exported by
:mod:`pipeline.common.artifacts`, whose manifests record them).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Bytes read from the head and from the tail of an input file for its quick fingerprint.
_FINGERPRINT_EDGE_BYTES = 1 << 20


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the form every hash in a manifest is taken of."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def hash_object(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    with open(path, "rb") as fh:
        return hexdigest_of(fh, "sha256", chunk)


def hexdigest_of(fh, algorithm: str, chunk: int = 1 << 22) -> str:
    """hashlib ``algorithm`` of an open binary file from its current position (hashlib.file_digest is 3.11+)."""
    digest = hashlib.new(algorithm)
    while block := fh.read(chunk):
        digest.update(block)
    return digest.hexdigest()


def fingerprint_file(path: str | os.PathLike) -> dict:
    """Cheap, content-based fingerprint of an input file: size + sha256 of its head and tail.

    Reading the whole of a 40 GB corpus on every rerun would defeat "up to date in seconds";
    size plus the first and last MiB changes for any realistic edit (appends, truncations,
    re-downloads, regenerated files). Files up to 2 MiB are hashed whole.
    """
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        if size <= 2 * _FINGERPRINT_EDGE_BYTES:
            digest.update(fh.read())
        else:
            digest.update(fh.read(_FINGERPRINT_EDGE_BYTES))
            fh.seek(size - _FINGERPRINT_EDGE_BYTES)
            digest.update(fh.read(_FINGERPRINT_EDGE_BYTES))
    return {"path": str(path.resolve()), "size": size, "edge_sha256": digest.hexdigest()}


def tokenizer_identity(vocab: Mapping[str, int]) -> str:
    """Identity of a tokenizer: sha256 of its vocabulary (token -> id), order independent."""
    return "vocab-sha256:" + hash_object(sorted(vocab.items(), key=lambda kv: kv[1]))


def code_version() -> dict:
    """Package version plus, when run from a git checkout, the commit and whether it is dirty."""
    from importlib import metadata

    try:
        version = metadata.version("semdlm")
    except metadata.PackageNotFoundError:  # running from a source tree without install
        version = "unknown"
    info: dict[str, Any] = {"package": "semdlm", "version": version}
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=repo, capture_output=True, text=True, timeout=10).stdout
        info.update(git_commit=commit, git_dirty=bool(dirty.strip()))
    except (OSError, subprocess.SubprocessError):
        pass
    return info
