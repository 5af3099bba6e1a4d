"""``--remote URI``: copy a complete preprocess artifact to remote storage with streaming's uploader.

Any URI mosaicml-streaming uploads to (s3://, gs://, oci://, hf://, azure://, ... or a plain path).
Every file the manifest lists goes first, ``manifest.json`` last: a remote that has a manifest is
complete (training reads the manifest before anything else). A remote whose manifest already equals
the local one is up to date and left alone.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from pipeline.common.artifacts import MANIFEST_NAME, StageError, load_manifest, remote_path


def upload_artifact(directory: str | Path, remote: str, log=print) -> None:
    """Upload the artifact ``directory`` to ``remote`` (StageError naming the remote on failure)."""
    directory = Path(directory)
    manifest = load_manifest(directory)
    if _remote_manifest(remote) == (directory / MANIFEST_NAME).read_bytes():
        log(f"{remote}: up to date")
        return
    by_folder: dict[str, list[str]] = {}
    for rel in sorted(manifest["outputs"]):
        folder, _, name = rel.rpartition("/")
        by_folder.setdefault(folder, []).append(name)
    quiet = logging.getLogger("streaming.base.storage.upload")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it warns that the local folder is not empty: it is the artifact
    try:
        root = None
        for folder, names in by_folder.items():
            uploader = _uploader(directory / folder, remote_path(remote, folder) if folder else remote)
            for name in names:
                uploader.upload_file(name)
            root = uploader if not folder else root
        (root or _uploader(directory, remote)).upload_file(MANIFEST_NAME)
    except Exception as exc:  # noqa: BLE001 - every storage backend raises its own errors
        detail = " ".join(str(exc).split())[:300]
        raise StageError(f"--remote {remote}: upload failed ({type(exc).__name__}: {detail}); the local artifact "
                         f"{directory} is complete, rerun to retry the upload") from None
    finally:
        quiet.setLevel(level)
    log(f"{remote}: uploaded {sum(map(len, by_folder.values())) + 1} files")


def _uploader(local: Path, remote: str):
    from streaming.base.storage.upload import CloudUploader

    return CloudUploader.get(out=(str(local), remote), keep_local=True, exist_ok=True)


def _remote_manifest(remote: str) -> bytes | None:
    """The remote's manifest.json, or None when there is none yet (or it cannot be read)."""
    from streaming.base.storage import CloudDownloader

    with tempfile.TemporaryDirectory(prefix="semdlm_remote_") as tmp:
        target = Path(tmp) / MANIFEST_NAME
        try:
            CloudDownloader.direct_download(remote_path(remote, MANIFEST_NAME), str(target))
        except Exception:  # noqa: BLE001 - absent (or unreadable): upload everything
            return None
        return target.read_bytes()
