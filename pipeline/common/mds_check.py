"""Integrity of MDS shards (the preprocess artifact's splits) against the sizes and sha1 sums in their index.json.

preprocess writes every shard with ``hashes=["sha1"]``: a split's ``index.json`` records size and sha1 of
each compressed file (``shard.N.mds.zstd``, also listed in the manifest) and of the raw file streaming
decompresses it into on first use (``shard.N.mds``, written next to it and kept; not in the manifest).
streaming's own ``validate_hash`` checks only a compressed file it is about to decompress: never a raw
file that already exists (every run after the first reads those), nor an uncompressed shard. So readers
check themselves:

* :class:`VerifiedShards` (a ``StreamingDataset`` mixin; :func:`verified_dataset_class`) checks a shard's
  files the first time this process touches it: one sha1 pass per file, once per process, in streaming's
  download thread when iterating. A damaged shard stops the reader with :class:`ShardCorruptError`, one
  line naming the file; no sample of an unchecked shard is returned.
* :func:`split_problems` (``python -m pipeline.verify``) checks a whole split: index.json against the
  manifest (sample count, column) and every shard file present.
"""
from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import threading
from collections.abc import Mapping
from functools import cache
from pathlib import Path

from .artifacts import hexdigest_of
from .errors import ArtifactError

INDEX_NAME = "index.json"


class ShardCorruptError(ArtifactError):
    """A shard file whose size or sha1 differs from its split's index.json; the message names the file."""

    def __init__(self, message: str):
        # Raised in a DataLoader worker, it reaches the main process rebuilt from the worker's formatted
        # traceback ("Caught ShardCorruptError in DataLoader worker process 0 ... Original Traceback ...");
        # keep our one line, the traceback's last.
        if "Original Traceback" in message:
            message = message.rstrip().splitlines()[-1].split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)


class _Missing(str):
    """A file_problem that says the file is absent (a cache may legitimately not hold it)."""


def file_problem(path: Path, size: int, hashes: Mapping[str, str]) -> str | None:
    """Why ``path`` differs from its index.json entry (size, then the first hashlib-known hash), or None.

    The file is opened first and measured through the open handle: in a shared cache another rank may
    delete a ``.zstd`` the moment it has decompressed it, and a check-then-open would then fail with
    FileNotFoundError half-way (an unlinked file stays readable once open).
    """
    try:
        fh = open(path, "rb")
    except (FileNotFoundError, IsADirectoryError):
        return _Missing(f"{path} is missing (its index.json lists it)")
    with fh:
        actual = os.fstat(fh.fileno()).st_size
        if actual != size:
            return f"{path} was truncated or replaced: it has {actual} bytes, index.json records {size}"
        algorithm = next((a for a in hashes if a in hashlib.algorithms_available), None)
        if algorithm is not None and hexdigest_of(fh, algorithm) != hashes[algorithm]:
            return f"{path} is corrupt: its {algorithm} differs from the one index.json records (a flipped bit?)"
    return None


def _advice(path: Path, derived: bool) -> str:
    if derived:  # streaming's decompressed copy: deleting it makes streaming decompress the checked original
        return "; delete it and streaming decompresses its .zstd/.gz original again"
    artifact = path.parent.parent
    return (f"; the preprocess artifact {artifact} is damaged: run `python -m pipeline.verify {artifact}` and "
            "rebuild it (preprocess --force)")


def shard_entry_problems(split_dir: Path, entry: Mapping) -> list[tuple[Path, str]]:
    """(file, problem) of one index.json shard entry's files. A raw file that is absent next to its
    compressed original is fine (not decompressed yet); the compressed original must be there."""
    return _entry_check(split_dir, entry, present_only=False)[0]


def _entry_check(split_dir: Path, entry: Mapping, present_only: bool) -> tuple[list[tuple[Path, str]], int]:
    """shard_entry_problems, and how many files were there to check. ``present_only`` (a stream's cache: it
    fills on demand and drops a ``.zstd`` once decompressed) skips every absent file."""
    problems, present = [], 0
    raw, zipped = entry.get("raw_data") or {}, entry.get("zip_data")
    for info, derived in ((raw, zipped is not None), (zipped, False)):
        if not info:
            continue
        path = split_dir / info["basename"]
        problem = file_problem(path, int(info["bytes"]), info.get("hashes") or {})
        missing = isinstance(problem, _Missing)
        present += not missing
        if problem is None or (missing and (derived or present_only)):
            continue
        problems.append((path, problem + _advice(path, derived)))
    return problems, present


def split_problems(split_dir: Path, manifest: Mapping) -> list[tuple[Path, str]]:
    """(file, problem) of one preprocess split: index.json against the manifest (sample count, column), and
    every shard file against index.json."""
    split_dir = Path(split_dir)
    index_path = split_dir / INDEX_NAME
    try:
        index = json.loads(index_path.read_text())
        shards = list(index["shards"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [(index_path, f"{index_path} is unreadable: {exc}")]
    problems = []
    if index.get("version") != 2:
        problems.append((index_path, f"{index_path}: streaming index version {index.get('version')!r}, expected 2"))
    column = f"ndarray:{manifest.get('token_dtype')}:{manifest.get('seq_len')}"
    odd = [s.get("raw_data", {}).get("basename") for s in shards if s.get("column_encodings") != [column]]
    if odd and manifest.get("token_dtype"):
        problems.append((index_path, f"{index_path}: shard(s) {odd[:3]} do not hold the manifest's column {column}"))
    expected = (manifest.get("stats") or {}).get(split_dir.name, {}).get("sequences")
    samples = sum(int(s.get("samples", 0)) for s in shards)
    if expected is not None and samples != expected:
        problems.append((index_path, f"{index_path} lists {samples} samples, the manifest records {expected} "
                                     "sequences"))
    for entry in shards:
        problems += shard_entry_problems(split_dir, entry)
    return problems


class VerifiedShards:
    """``StreamingDataset`` mixin: each shard is checked against index.json before this process reads it.

    ``prepare_shard`` (streaming's download thread, before it decompresses) and ``get_item`` (reads by
    index, and shards already decompressed) check a shard once per process; a failure in the download
    thread is kept and raised by ``__iter__`` in the iterating thread instead of being logged there.
    """

    def _check_shard(self, shard_id: int) -> None:
        checked = self.__dict__.setdefault("_semdlm_checked_shards", set())
        if shard_id in checked:
            return
        lock = self.__dict__.setdefault("_semdlm_check_lock", threading.Lock())
        with lock:  # the download thread and the reading thread may reach a shard together: hash it once
            if shard_id in checked:
                return
            stream = self.streams[self.stream_per_shard[shard_id]]
            split_dir = Path(stream.local) / (stream.split or "")
            # A remote stream's cache fills on demand and drops a .zstd once decompressed, also while
            # this rank looks (another rank prepares it): check the files that are there when opened,
            # and the shard for good only once one of them was.
            cached = stream.remote not in (None, stream.local)
            seen = False
            for raw_info, zip_info in self.shards[shard_id].file_pairs:
                infos = {"raw_data": vars(raw_info), "zip_data": vars(zip_info) if zip_info else None}
                problems, present = _entry_check(split_dir, infos, present_only=cached)
                seen |= present > 0
                if problems:
                    raise ShardCorruptError(problems[0][1])
            if seen or not cached:
                checked.add(shard_id)

    def _raise_shard_error(self) -> None:
        error = getattr(self, "_semdlm_shard_error", None)
        if error is not None:
            raise error

    def get_item(self, sample_id: int, retry: int = 7):
        try:
            self._raise_shard_error()  # the download thread found one first
            self._check_shard(self.spanner[sample_id][0])
            return super().get_item(sample_id, retry)
        except ShardCorruptError:
            raise
        except RuntimeError:  # streaming's "Background thread failed": say why, when it was a damaged shard
            self._raise_shard_error()
            raise

    def prepare_shard(self, shard_id: int, blocking: bool = True) -> None:
        self._check_shard(shard_id)  # a local artifact: before streaming decompresses it
        super().prepare_shard(shard_id, blocking)
        self._check_shard(shard_id)  # a remote stream: what the download brought (a no-op once checked)

    def on_exception(self, future) -> None:
        error = None if future.cancelled() else future.exception()
        if isinstance(error, ShardCorruptError):
            self._semdlm_shard_error = error  # kept for good: the file will not heal
            self._event.set()  # streaming's threads and its yield loop stop
            return
        super().on_exception(future)

    def __iter__(self):
        try:
            yield from super().__iter__()
        except ShardCorruptError:
            raise
        except RuntimeError:  # an epoch started after the download thread failed
            self._raise_shard_error()
            raise
        self._raise_shard_error()  # the download thread failed and streaming ended the epoch early


@cache
def verified_dataset_class():
    """``StreamingDataset`` with :class:`VerifiedShards`, registered under the machine's registration lock
    (``shm_registration``). streaming is imported here: it pulls in torch."""
    from streaming import StreamingDataset

    from .shm_registration import registration_lock

    class VerifiedStreamingDataset(VerifiedShards, StreamingDataset):
        def __init__(self, *args, **kwargs):
            with registration_lock():  # two jobs on one machine must not take the same shared-memory prefix
                super().__init__(*args, **kwargs)

    return VerifiedStreamingDataset


@contextlib.contextmanager
def released_shared_memory():
    """Close every streaming shared-memory block made inside the block when it ends (and unlink the ones this
    process created), for an in-process reader whose dataset is dropped at the end of the block.

    Why: each ``StreamingDataset`` registers a shared-memory prefix, and to find a free one walks every prefix
    that exists, attaching to each; streaming closes none of these before the process exits (each sits in an
    ``atexit`` hook). A process that builds N datasets therefore holds O(N^2) descriptors (~300 for the
    N-th here), which is what once made the test suite run one pytest process per file. Released, the next
    dataset finds prefix 0 free again and attaches to nothing. Not for a dataset still in use after the
    block (a training loader): its buffers are closed.
    """
    import atexit

    from streaming.base.shared import memory

    made, init = [], memory.SharedMemory.__init__

    def tracked(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)

    memory.SharedMemory.__init__ = tracked
    try:
        yield
    finally:
        memory.SharedMemory.__init__ = init
        gc.collect()  # the dataset (and the numpy views of its buffers) is gone before the buffers close
        for shm in reversed(made):
            atexit.unregister(shm.cleanup)
            try:
                shm.cleanup()
            except BufferError:  # a view still exported: leave this one to the atexit hook, as before
                atexit.register(shm.cleanup)


def read_split_sequences(split_dir, max_sequences: int | None = None, column: str = "tokens"):
    """The sequences of an MDS split (the first ``max_sequences`` when given), in order, as Long[N, L] (torch)."""
    import numpy as np
    import torch

    split_dir = Path(split_dir)
    if not (split_dir / "index.json").is_file():
        raise FileNotFoundError(f"{split_dir}: not an MDS split directory (no index.json)")
    with released_shared_memory():  # each shard is checked against its index.json sha1 before it is read
        ds = verified_dataset_class()(local=str(split_dir), shuffle=False, batch_size=1, predownload=None)
        n = len(ds) if max_sequences is None else min(len(ds), max_sequences)
        rows = [np.array(ds[i][column], dtype=np.int64) for i in range(n)]
        del ds
    if not rows:
        raise ValueError(f"{split_dir}: the split holds no sequences")
    return torch.from_numpy(np.stack(rows))
