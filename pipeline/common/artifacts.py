"""The artifact layer shared by every stage.

A stage's output directory is an *artifact*: a directory that holds ``manifest.json`` next to the
files the stage produced. The manifest records what produced the artifact (stage, code version,
resolved config and its hash), what it was produced from (fingerprints of the input files and of
the upstream artifacts' manifests, the tokenizer identity), what it holds (every file with size
and sha256) and how long it took.

Three guarantees, used by every stage through :class:`StageRun`:

* **Atomic**: work is written into a temporary sibling directory that is renamed into place only
  after the manifest (the last file written) is complete. An interrupted run leaves at most a
  ``.NAME.tmp-*`` sibling, which no stage accepts and the next run of the same stage removes.
* **Skip if fresh**: a rerun whose freshness key (stage, schema version, config hash, input
  fingerprints, upstream manifest hashes) matches the existing manifest prints "up to date" and
  does nothing; ``force=True`` rebuilds.
* **Refuse bad upstreams**: :func:`load_manifest` raises :class:`ArtifactError` naming the
  directory when the manifest is missing, unparsable, not marked complete, edited after it was
  written (its ``manifest_sha256`` self-checksum), of another stage, or when a file it lists is
  missing or has another size (truncated or replaced).

A run also holds the output's lock (:mod:`pipeline.common.locks`): one writer per artifact.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import glob
import json
import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import (  # noqa: F401 (the stages import their errors and stage_errors from here)
    ArtifactError,
    ConfigError,
    DiskFullError,
    StageError,
    is_disk_full,
    stage_errors,
)
from .identity import (  # noqa: F401 (re-exported: the stages hash and fingerprint through this module)
    canonical_json,
    code_version,
    fingerprint_file,
    hash_object,
    hexdigest_of,
    sha256_file,
    tokenizer_identity,
)
from .locks import DirectoryLock, output_lock_path, pid_alive

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
SELF_CHECKSUM = "manifest_sha256"


def remote_path(remote: str, *parts: str) -> str:
    """``remote``/part/... of an artifact on remote storage: URIs and plain paths alike (as streaming joins them)."""
    return "/".join([remote.rstrip("/"), *parts])


# --------------------------------------------------------------------------- reading artifacts
def load_manifest(directory: str | os.PathLike, stage: str | None = None,
                  check_files: bool = True) -> dict:
    """Return the manifest of a complete artifact, or raise :class:`ArtifactError`.

    ``stage`` (when given) must match the manifest's stage. With ``check_files`` every listed
    output must exist with its recorded size (a cheap check; :func:`verify_artifact` also
    re-hashes the contents).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"artifact directory {str(directory)!r} does not exist")
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ArtifactError(
            f"{str(directory)!r} has no {MANIFEST_NAME}: it is not a complete artifact "
            "(was the stage that writes it interrupted, or is this the wrong directory?)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{str(manifest_path)!r} is unreadable: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("complete") is not True:
        raise ArtifactError(f"{str(directory)!r}: manifest is not marked complete")
    recorded = manifest.get(SELF_CHECKSUM)  # absent in manifests written before it existed: accepted
    if recorded is not None and recorded != manifest_self_checksum(manifest):
        raise ArtifactError(f"{manifest_path} was edited after it was written (its {SELF_CHECKSUM} no longer "
                            "matches its content); rebuild the artifact (rerun its stage with --force)")
    if stage is not None and manifest.get("stage") != stage:
        raise ArtifactError(f"{str(directory)!r} holds a {manifest.get('stage')!r} artifact, "
                            f"expected a {stage!r} artifact")
    if check_files:
        for rel, meta in manifest.get("outputs", {}).items():
            path = directory / rel
            if not path.is_file():
                raise ArtifactError(f"{path} is missing: {str(directory)!r} is incomplete "
                                    f"(its {MANIFEST_NAME} lists it); rebuild it (rerun its stage with --force)")
            if path.stat().st_size != meta["size"]:
                raise ArtifactError(f"{path} was truncated or replaced: it has {path.stat().st_size} bytes, "
                                    f"{MANIFEST_NAME} records {meta['size']}; rebuild {str(directory)!r} "
                                    "(rerun its stage with --force)")
    return manifest


def manifest_self_checksum(manifest: Mapping[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON without its own checksum: a hand edit changes it."""
    return hash_object({k: v for k, v in manifest.items() if k != SELF_CHECKSUM})


def verify_artifact(directory: str | os.PathLike) -> list[str]:
    """Re-hash every output of an artifact; return the relative paths whose sha256 differs."""
    manifest = load_manifest(directory)
    return [rel for rel, meta in manifest["outputs"].items()
            if sha256_file(Path(directory) / rel) != meta["sha256"]]


def manifest_hash(directory: str | os.PathLike) -> str:
    """sha256 of an artifact's manifest file: how a downstream stage pins its upstream."""
    return sha256_file(Path(directory) / MANIFEST_NAME)


# --------------------------------------------------------------------------- writing artifacts
def expand_inputs(patterns: Iterable[str], suffixes: tuple[str, ...] | None = None) -> list[Path]:
    """Expand files, folders (recursively) and globs into a sorted, de-duplicated file list.

    A pattern that matches nothing raises :class:`FileNotFoundError` naming it.
    """
    files: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        if not matches or not all(os.path.exists(m) for m in matches):
            raise FileNotFoundError(f"input {pattern!r} does not exist")
        for match in matches:
            path = Path(match)
            if path.is_dir():
                found = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
                if suffixes:
                    found = [p for p in found if _has_suffix(p, suffixes)]
                if not found:
                    raise FileNotFoundError(f"input folder {str(path)!r} holds no input files")
                files.extend(found)
            else:
                files.append(path)
    seen, unique = set(), []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def _has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    name = path.name[:-3] if path.name.endswith(".gz") else path.name
    return name.endswith(suffixes)


@dataclass
class StageRun:
    """One run of a stage that produces the artifact ``out_dir``.

    Usage::

        run = StageRun("preprocess", out, config=cfg, inputs=files, force=args.force,
                       break_lock=args.break_lock)
        if run.is_up_to_date():
            print(f"{out}: up to date"); return 0
        with run as tmp:                 # tmp: an empty temporary sibling directory
            ... write files into tmp ...
            run.extra["stats"] = {...}   # anything else for the manifest
        # here out_dir is complete and holds manifest.json

    ``with run`` holds the output's lock (:mod:`pipeline.common.locks`, a sibling ``.NAME.lock``):
    a second job on the same directory stops with ``LockHeldError``. A stage with expensive work
    before ``with run`` takes it earlier with ``with run.locked(): ...``. A write that runs out of
    space raises :class:`DiskFullError`; the previous artifact stays in place either way.
    """

    stage: str
    out_dir: Path
    config: Mapping[str, Any]
    inputs: list[Path] = field(default_factory=list)
    upstream: Mapping[str, Path] = field(default_factory=dict)
    tokenizer: Mapping[str, Any] | None = None
    schema_version: int = 1
    force: bool = False
    extra: dict = field(default_factory=dict)
    break_lock: bool = False  # take the output's lock whatever its holder's state (--break-lock)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.config_hash = hash_object(dict(self.config))
        self._input_fingerprints: list[dict] | None = None
        self._upstream_hashes = {name: {"path": str(Path(d).resolve()), "manifest_sha256": manifest_hash(d)}
                                 for name, d in self.upstream.items()}
        self._tmp: Path | None = None
        self._start = 0.0
        self._lock: DirectoryLock | None = None
        self._lock_taken_by_enter = False

    # The key whose equality means "nothing to do".
    def freshness_key(self) -> dict:
        if self._input_fingerprints is None:
            self._input_fingerprints = [fingerprint_file(p) for p in self.inputs]
        return {"stage": self.stage, "schema_version": self.schema_version,
                "config_hash": self.config_hash, "inputs": self._input_fingerprints,
                "upstream": self._upstream_hashes,
                "tokenizer_identity": (self.tokenizer or {}).get("identity")}

    def is_up_to_date(self) -> bool:
        if self.force:
            return False
        try:
            existing = load_manifest(self.out_dir, stage=self.stage)
        except ArtifactError:
            return False
        return existing.get("freshness_key") == canonical_json(self.freshness_key())

    @contextlib.contextmanager
    def locked(self):
        """Hold the output's lock for the block (``with run`` inside it keeps holding it)."""
        if self._lock is not None:
            yield
            return
        self._lock = DirectoryLock(output_lock_path(self.out_dir), what=str(self.out_dir),
                                   break_lock=self.break_lock).acquire()
        try:
            yield
        finally:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Path:
        self._start = time.time()
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self._lock_taken_by_enter = self._lock is None
        if self._lock_taken_by_enter:
            self._lock = DirectoryLock(output_lock_path(self.out_dir), what=str(self.out_dir),
                                       break_lock=self.break_lock).acquire()
        try:
            self._remove_stale_siblings()
            self._tmp = self.out_dir.parent / f".{self.out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            self._tmp.mkdir()
        except BaseException as exc:
            self._release_own_lock()
            if is_disk_full(exc):
                raise self._disk_full(exc) from exc
            raise
        return self._tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self._tmp is not None
        try:
            if exc_type is None:
                try:
                    self._write_manifest(self._tmp)
                    self._swap_into_place(self._tmp)
                except OSError as failure:
                    if is_disk_full(failure):
                        raise self._disk_full(failure) from failure
                    raise
        finally:
            # Whatever failed (the stage's writes, the manifest, the swap), no half-written directory stays.
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._release_own_lock()
        if exc is not None and is_disk_full(exc):
            raise self._disk_full(exc) from exc
        return False

    def _release_own_lock(self) -> None:
        if self._lock_taken_by_enter and self._lock is not None:
            self._lock.release()
            self._lock = None
        self._lock_taken_by_enter = False

    def _disk_full(self, exc: OSError) -> DiskFullError:
        kept = ("the previous artifact is unchanged" if (self.out_dir / MANIFEST_NAME).is_file()
                else "there was no previous artifact")
        where = f" writing {exc.filename}" if exc.filename else ""
        return DiskFullError(f"{self.out_dir}: no space left on device{where} ({exc.strerror or exc}); the partial "
                             f"output was removed and {kept}. Free space and rerun.")

    def _remove_stale_siblings(self) -> None:
        # Leftovers of runs that were killed: never accepted by load_manifest, safe to delete
        # once their owner is gone.
        name = glob.escape(self.out_dir.name)
        for kind in ("tmp", "old"):
            for stale in self.out_dir.parent.glob(f".{name}.{kind}-*"):
                pid = stale.name.rsplit("-", 2)[-2]
                if pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid)):
                    continue  # another live run is writing it
                if kind == "old" and not self.out_dir.exists() and (stale / MANIFEST_NAME).is_file():
                    os.rename(stale, self.out_dir)  # killed mid-swap: the previous artifact goes back first
                    continue
                shutil.rmtree(stale, ignore_errors=True)

    def _write_manifest(self, tmp: Path) -> None:
        outputs = {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            rel = path.relative_to(tmp).as_posix()
            outputs[rel] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
        now = time.time()
        manifest = {
            "format": MANIFEST_FORMAT,
            "stage": self.stage,
            "schema_version": self.schema_version,
            "complete": True,
            "code_version": code_version(),
            "config": dict(self.config),
            "config_hash": self.config_hash,
            "inputs": self.freshness_key()["inputs"],
            "upstream": self._upstream_hashes,
            "tokenizer": dict(self.tokenizer) if self.tokenizer else None,
            "outputs": outputs,
            "timings": {"started": _iso(self._start), "finished": _iso(now),
                        "seconds": round(now - self._start, 3)},
            "host": socket.gethostname(),
            "command": sys.argv,
            **self.extra,
            "freshness_key": canonical_json(self.freshness_key()),
        }
        # Checksummed as it will read back (default=str turns Paths etc. into strings).
        manifest = json.loads(json.dumps(manifest, default=str))
        manifest[SELF_CHECKSUM] = manifest_self_checksum(manifest)
        # Written last, through its own temp file: its presence marks the directory complete.
        part = tmp / (MANIFEST_NAME + ".part")
        part.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
        os.replace(part, tmp / MANIFEST_NAME)

    def _swap_into_place(self, tmp: Path) -> None:
        old = None
        if self.out_dir.exists():
            old = self.out_dir.parent / f".{self.out_dir.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(self.out_dir, old)
        try:
            os.rename(tmp, self.out_dir)
        except BaseException:
            if old is not None:  # put the previous artifact back before anything else sees the gap
                os.rename(old, self.out_dir)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, tz=_dt.timezone.utc).isoformat(timespec="seconds")


def write_csv(path: str | os.PathLike, rows: list[dict]) -> None:
    """Rows of dicts (columns = the first row's keys) as a CSV file: the tables stages write."""
    import csv

    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
