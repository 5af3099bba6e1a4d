"""Data streams: the train and validation data of a run as a list of preprocess artifacts.

Each stream is one preprocess artifact ROOT, read through mosaicml-streaming's own ``Stream``
(``split="train"`` / ``"validation"``)::

    data:
      streams:
        - {name: lm1b, remote: s3://bucket/lm1b, local: /scratch/cache/lm1b, proportion: 0.7}
        - {name: web,  remote: /shared/artifacts/web, local: /scratch/cache/web, proportion: 0.3}
      validation_streams: [...]      # optional; default: the validation split of the train streams
      epoch_size: 100000             # optional; samples per epoch (proportions only)

``remote`` is any URI streaming downloads from (s3://, gs://, oci://, hf://, ... or a plain path);
``local`` is then the per-node cache. A stream without ``remote`` is a local artifact read in place
(``--preprocessed DIR`` is exactly that, one stream). Weights are streaming's: ``proportion`` (relative,
all streams or none), ``repeat`` or ``choose`` (absolute), or none (every sample once per epoch).

Before training, every stream's ``manifest.json`` is read (downloaded into ``local`` for a remote)
and checked: a complete preprocess artifact, with the split it is used for, and the same tokenizer
identity, seq_len and mode as the first train stream. After a split's index is in the cache it must
be the one that manifest lists (a cache filled from another version of the data is refused).
"""
from __future__ import annotations

import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from pipeline.common.artifacts import MANIFEST_NAME, ArtifactError, ConfigError, load_manifest, remote_path, sha256_file

WEIGHTS = ("proportion", "repeat", "choose")
STREAM_KEYS = ("name", "remote", "local", *WEIGHTS)
DATA_KEYS = ("streams", "validation_streams", "epoch_size", "download_timeout", "download_retry")
STAGE = "preprocess"


@dataclass(frozen=True)
class StreamSpec:
    name: str
    remote: str | None                # None: ``local`` is the artifact itself
    local: str
    proportion: float | None = None
    repeat: float | None = None
    choose: int | None = None

    @property
    def where(self) -> str:
        return self.remote or self.local

    def weights(self) -> dict:
        return {k: getattr(self, k) for k in WEIGHTS if getattr(self, k) is not None}

    def to_dict(self) -> dict:
        return {"name": self.name, "remote": self.remote, "local": self.local, **self.weights()}


@dataclass(frozen=True)
class DataSpec:
    streams: tuple[StreamSpec, ...]
    validation: tuple[StreamSpec, ...]
    epoch_size: int | None = None
    download_timeout: float = 60.0    # streaming's defaults
    download_retry: int = 2
    from_streams: bool = False        # data.streams (False: one --preprocessed artifact)


# --------------------------------------------------------------------------- config
def _number(where: str, value, kind: type):
    """A positive finite number (an integer for ``kind=int``); ConfigError naming ``where`` otherwise."""
    try:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    except OverflowError:  # an int beyond float range
        ok = False
    if ok and kind is int:
        ok = float(value).is_integer()
    if not ok:
        raise ConfigError(f"{where} must be a positive {'integer' if kind is int else 'number'}, got {value!r}")
    return kind(value)


def _path(where: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where} must be a non-empty string (a path or URI), got {value!r}")
    return value.strip()


def parse_streams(key: str, entries) -> tuple[StreamSpec, ...]:
    """``data.streams`` / ``data.validation_streams``: a non-empty list of stream mappings, checked."""
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{key} must be a non-empty list of streams {{remote, local, proportion|repeat|choose}}, "
                          f"got {entries!r}")
    specs = []
    for i, entry in enumerate(entries):
        where = f"{key}[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a mapping with keys {list(STREAM_KEYS)}, got {entry!r}")
        unknown = sorted(set(map(str, entry)) - set(STREAM_KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown}; known: {list(STREAM_KEYS)}")
        remote = None if entry.get("remote") is None else _path(f"{where}.remote", entry["remote"])
        if entry.get("local") is None:
            what = "the per-node cache of the remote" if remote else "the artifact directory"
            raise ConfigError(f"{where}: local is required ({what})")
        local = _path(f"{where}.local", entry["local"])
        given = [k for k in WEIGHTS if entry.get(k) is not None]
        if len(given) > 1:
            raise ConfigError(f"{where}: give at most one of proportion, repeat, choose (got {given})")
        weights = {k: _number(f"{where}.{k}", entry[k], int if k == "choose" else float) for k in given}
        name = entry.get("name")
        if name is None:
            name = os.path.basename(os.path.normpath(remote or local)) or f"stream{i}"
        elif not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{where}.name must be a non-empty string, got {name!r}")
        specs.append(StreamSpec(name.strip(), remote, local, **weights))
    with_proportion = [s.proportion is not None for s in specs]
    if any(with_proportion) and not all(with_proportion):
        raise ConfigError(f"{key}: proportion is relative: give it on every stream or on none "
                          "(use repeat / choose for absolute weights)")
    for attr, what in (("name", "names"), ("local", "local directories")):
        values = [os.path.normpath(getattr(s, attr)) if attr == "local" else s.name for s in specs]
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            hint = " (set name: on each stream)" if attr == "name" else ": each stream needs its own"
            raise ConfigError(f"{key}: stream {what} must be unique, {twice} used twice{hint}")
    return tuple(specs)


def parse_data(data, preprocessed: str | None) -> DataSpec | None:
    """TrainConfig.data (+ ``preprocessed``) as a DataSpec; None when the run names no data yet."""
    if not isinstance(data, dict):
        raise ConfigError(f"data must be a mapping with keys {list(DATA_KEYS)}, got {data!r}")
    unknown = sorted(set(map(str, data)) - set(DATA_KEYS))
    if unknown:
        raise ConfigError(f"data: unknown keys {unknown}; known: {list(DATA_KEYS)}")
    if data.get("streams") is not None and preprocessed is not None:
        raise ConfigError("give the data either as --preprocessed DIR (preprocessed=) or as data.streams, not both")
    if data.get("streams") is not None:
        streams, from_streams = parse_streams("data.streams", data["streams"]), True
    elif preprocessed is not None:
        name = os.path.basename(os.path.normpath(preprocessed)) or "preprocessed"
        streams, from_streams = (StreamSpec(name, None, preprocessed),), False
    else:
        streams, from_streams = (), False
    validation = streams
    if data.get("validation_streams") is not None:
        validation = parse_streams("data.validation_streams", data["validation_streams"])
    epoch_size = None if data.get("epoch_size") is None else _number("data.epoch_size", data["epoch_size"], int)
    if epoch_size is not None and any(s.repeat is not None or s.choose is not None for s in streams):
        raise ConfigError("data.epoch_size applies to proportion (or unweighted) streams; "
                          "repeat / choose fix the epoch themselves")
    timeout = _number("data.download_timeout", data.get("download_timeout", 60.0), float)
    retry = data.get("download_retry", 2)
    if not isinstance(retry, int) or isinstance(retry, bool) or retry < 0:
        raise ConfigError(f"data.download_retry must be an integer >= 0, got {retry!r}")
    if not streams:
        return None
    return DataSpec(streams, validation, epoch_size, timeout, retry, from_streams)


# --------------------------------------------------------------------------- manifests
def fetch_manifest(spec: StreamSpec, timeout: float = 60.0) -> tuple[dict, Path]:
    """(manifest, the local directory holding it) of a stream; ArtifactError naming the stream.

    A remote manifest is downloaded with streaming's downloader into ``local`` (through a unique
    temporary name, so ranks that fetch it at once never read a partial file)."""
    local = Path(spec.local)
    try:
        if spec.remote is None:
            return load_manifest(local, stage=STAGE), local
        _download(remote_path(spec.remote, MANIFEST_NAME), local / MANIFEST_NAME, timeout)
        return load_manifest(local, stage=STAGE, check_files=False), local
    except ArtifactError as exc:
        raise ArtifactError(f"stream {spec.name!r} ({spec.where}): {exc}") from None


def _download(remote: str, target: Path, timeout: float) -> None:
    from streaming.base.storage import CloudDownloader

    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.part")
    try:
        CloudDownloader.direct_download(remote, str(part), timeout)
        os.replace(part, target)
    except Exception as exc:  # noqa: BLE001 - every storage backend raises its own errors
        detail = " ".join(str(exc).split())[:300]
        raise ArtifactError(f"cannot read {remote} ({type(exc).__name__}: {detail}); is the storage reachable "
                            "(credentials, network) and is this a preprocess artifact uploaded with "
                            "python -m preprocess --remote?") from None
    finally:
        for leftover in (part, Path(f"{part}.tmp")):
            leftover.unlink(missing_ok=True)


def check_streams(train: list[tuple[StreamSpec, dict]], validation: list[tuple[StreamSpec, dict]]) -> None:
    """Each stream holds its split; all share the first train stream's tokenizer, seq_len and mode."""
    for split, pairs in (("train", train), ("validation", validation)):
        for spec, manifest in pairs:
            if split not in (manifest.get("splits") or []):
                hint = "; rerun preprocess with --valid-fraction or --valid-input" if split == "validation" else ""
                raise ArtifactError(f"stream {spec.name!r} ({spec.where}): split {split!r} missing (has "
                                    f"{manifest.get('splits')}){hint}")
    ref_spec, ref = train[0]
    facts = {"tokenizer identity": lambda m: (m.get("tokenizer") or {}).get("identity"),
             "seq_len": lambda m: m.get("seq_len"), "mode": lambda m: (m.get("config") or {}).get("mode")}
    for spec, manifest in train[1:] + validation:
        for what, fact in facts.items():
            if fact(manifest) != fact(ref):
                raise ArtifactError(f"stream {spec.name!r} ({spec.where}) has {what} {fact(manifest)!r}, the first "
                                    f"stream {ref_spec.name!r} has {fact(ref)!r}: every stream of a run must be "
                                    "preprocessed with the same tokenizer, --seq-len and --mode")


def check_cached_index(spec: StreamSpec, manifest: dict, split: str) -> None:
    """The split's index.json in ``local`` (when there) is the one the stream's manifest lists."""
    meta = (manifest.get("outputs") or {}).get(f"{split}/index.json")
    path = Path(spec.local) / split / "index.json"
    if meta is None or not path.is_file() or sha256_file(path) == meta["sha256"]:
        return
    if spec.remote is None:
        raise ArtifactError(f"stream {spec.name!r}: {path} does not match its manifest "
                            f"(python -m preprocess verify {spec.local})")
    raise ArtifactError(f"stream {spec.name!r}: the cache {spec.local} holds another version of {spec.remote} "
                        f"({split}/index.json differs from the remote manifest's); delete {Path(spec.local) / split} "
                        "or use another local, then rerun")


# --------------------------------------------------------------------------- validation rows
def allocate(wanted: int, weights: list[float], sizes: list[int]) -> list[int]:
    """Split ``wanted`` rows over streams in proportion to ``weights`` (largest remainder), at most
    ``sizes[i]`` from stream i; what a short stream cannot give goes to the others."""
    counts = [0] * len(sizes)
    target = min(wanted, sum(sizes))
    open_ = [i for i, n in enumerate(sizes) if n > 0]
    while sum(counts) < target:
        left = target - sum(counts)
        total = sum(weights[i] for i in open_)
        shares = {i: left * (weights[i] / total if total > 0 else 1 / len(open_)) for i in open_}
        take = {i: int(shares[i]) for i in open_}
        for i in sorted(open_, key=lambda i: (int(shares[i]) - shares[i], i))[:left - sum(take.values())]:
            take[i] += 1
        for i in open_:
            counts[i] += min(take[i], sizes[i] - counts[i])
        open_ = [i for i in open_ if counts[i] < sizes[i]]
    return counts


def validation_weights(specs: tuple[StreamSpec, ...], sizes: list[int]) -> list[float]:
    """The mixture a validation slice follows: proportion, choose, repeat x size, else size."""
    out = []
    for spec, n in zip(specs, sizes):
        if spec.proportion is not None:
            out.append(spec.proportion)
        elif spec.choose is not None:
            out.append(float(spec.choose))
        else:
            out.append((spec.repeat if spec.repeat is not None else 1.0) * n)
    return out
