"""The one corpus reader of the preprocess stage and the evaluation sets (``--eval-set``).

Both read the same sources the same way, so that a held-out file tokenised by ``evaluate`` gives
the very sequences ``preprocess`` would have written for it:

* ``hf:ID[:CONFIG][@SPLIT]``: a Hugging Face dataset through ``datasets`` (streaming; online only,
  offline it is one :class:`CorpusSourceError` line). Without ``@SPLIT`` the split is the *role*
  the source is read for (:func:`parse_hf_source`): ``preprocess --input`` reads ``train``,
  ``--valid-input`` ``validation``, ``--test-input`` and every eval set ``test``. Held-out data
  must never default to a dataset's train split;
* a JSON-lines file (``.jsonl`` / ``.json``, optionally ``.gz``): the ``text_field`` of each record;
* any other file, whatever its name (``.txt``, WikiText's ``wiki.test.raw``, no extension; ``.gz``
  is decompressed): one document per line.

Lines are read as bytes, so undecodable bytes are replaced *and counted* (:func:`decode`) instead of
crashing a run; empty documents are skipped with a reason. :func:`make_packer` is the packer of each
``--mode`` (the packers themselves are :mod:`pipeline.common.packing`).
"""
from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import StageError
from .packing import PadTruncatePacker, WrapPacker

HF_PREFIX = "hf:"
ROLES = ("train", "validation", "test")
_HF_CHUNK = 1024  # hf: records per chunk (files are chunked by bytes)


class CorpusSourceError(StageError, ValueError):
    """A source that cannot be read: an ``hf:`` dataset offline or unknown, ``datasets`` missing, a
    corrupt gzip file. One line; the stages' ``stage_errors`` turns it into exit status 2."""


@dataclass(frozen=True)
class HFSource:
    name: str
    config: str | None
    split: str


def is_hf_source(source: str) -> bool:
    return str(source).startswith(HF_PREFIX)


def parse_hf_source(source: str, role: str) -> HFSource:
    """``hf:ID[:CONFIG][@SPLIT]``; a missing ``@SPLIT`` is ``role`` (train / validation / test), the
    split the caller reads the source for: a test set read from ``hf:wikitext:wikitext-2-raw-v1``
    is WikiText's test split, never its train split."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; one of {ROLES}")
    body, split = source[len(HF_PREFIX):], role
    if "@" in body:
        body, split = body.rsplit("@", 1)
    name, _, config = body.partition(":")
    if not name or not split:
        raise CorpusSourceError(f"{source!r}: want hf:ID[:CONFIG][@SPLIT]")
    return HFSource(name, config or None, split)


def source_format(source: str) -> str:
    """``hf`` | ``jsonl`` (``.jsonl`` / ``.json``, optionally ``.gz``) | ``text`` (any other name)."""
    if is_hf_source(source):
        return "hf"
    name = source[:-3] if source.endswith(".gz") else source
    return "jsonl" if name.endswith((".jsonl", ".json")) else "text"


def iter_raw_chunks(source: str, text_field: str, role: str, chunk_bytes: int = 1 << 20) -> Iterator[list]:
    """The raw records of ``source`` in order, in chunks: lines as bytes (~``chunk_bytes`` a chunk) of
    a file, or field values (str, or None when missing) of an ``hf:`` dataset. Decode with :func:`decode`."""
    if is_hf_source(source):
        chunk: list = []
        for value in iter_hf_values(source, text_field, role):
            chunk.append(value)
            if len(chunk) == _HF_CHUNK:
                yield chunk
                chunk = []
        if chunk:
            yield chunk
        return
    with (gzip.open(source, "rb") if source.endswith(".gz") else open(source, "rb")) as fh:
        try:
            while lines := fh.readlines(chunk_bytes):
                yield lines
        except (OSError, EOFError) as exc:  # truncated / corrupt gzip
            raise CorpusSourceError(f"cannot read {source!r}: {exc}") from None


def decode(raw, fmt: str, text_field: str) -> tuple[str, str | None, int]:
    """One raw record of a source of format ``fmt`` -> (text, skip reason or None, replaced flag).

    Reasons: ``empty``, ``bad_json``, ``missing_field``. ``replaced`` is 1 when undecodable bytes were
    replaced by U+FFFD (or lone surrogates from JSON escapes, which no tokenizer takes, by ``?``)."""
    if fmt == "hf":
        if not isinstance(raw, str):
            return "", "missing_field", 0
        return (raw, None, 0) if raw.strip() else ("", "empty", 0)
    replaced = 0
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        line, replaced = raw.decode("utf-8", "replace"), 1
    line = line.removeprefix("\ufeff")
    if fmt == "jsonl":
        if not line.strip():
            return "", "empty", 0
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            return "", "bad_json", 0
        text = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            return "", "missing_field", 0
        if _has_surrogates(text):
            text, replaced = text.encode("utf-8", "replace").decode("utf-8"), 1
    else:
        text = line.rstrip("\r\n")
    if not text.strip():
        return "", "empty", 0
    return text, None, replaced


def iter_texts(source: str, text_field: str, role: str) -> Iterator[str]:
    """The documents of one source in order, skipped records dropped (the evaluation sets' view;
    preprocess routes and counts every record itself)."""
    fmt = source_format(source)
    for chunk in iter_raw_chunks(source, text_field, role):
        for raw in chunk:
            text, reason, _ = decode(raw, fmt, text_field)
            if reason is None:
                yield text


def iter_hf_values(source: str, text_field: str, role: str) -> Iterator[str | None]:
    """``text_field`` of every record of an ``hf:`` dataset (None where missing; a missing ``text``
    falls back to ``sentence``, the field of ``ptb_text_only``). Fails on the first record, as one line."""
    hf = parse_hf_source(source, role)
    try:
        import datasets  # optional dependency: pip install 'semdlm[hf]'
    except ImportError:
        raise CorpusSourceError(f"{source!r} needs the 'datasets' package (pip install 'semdlm[hf]')") from None
    try:
        iterator = iter(datasets.load_dataset(hf.name, hf.config, split=hf.split, streaming=True))
        first = next(iterator, None)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types when offline
        offline = any(os.environ.get(v) == "1" for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
        hint = " (HF_HUB_OFFLINE is set)" if offline else " (no network or unknown dataset?)"
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise CorpusSourceError(f"cannot load Hugging Face dataset {source!r} split {hf.split!r}{hint}: "
                                f"{type(exc).__name__}: {first_line}") from None
    if first is None:
        return
    for records in ([first], iterator):
        for record in records:
            value = record.get(text_field)
            if value is None and text_field == "text":
                value = record.get("sentence")
            yield value if isinstance(value, str) else None


def make_packer(mode: str, wrap: bool, seq_len: int, special: dict, dtype):
    """The packer of a preprocess ``--mode``: ``lm1b`` one ``[CLS] ids [SEP]`` sequence per sentence
    (``wrap``: sentences packed BD3-LM style), ``owt`` documents joined by ``special['separator']``
    and wrapped. ``special``: the artifact's ``special_ids`` (cls, sep, separator, pad)."""
    pad = special["pad"]
    if mode == "lm1b" and not wrap:
        return PadTruncatePacker(seq_len, special["cls"], special["sep"], pad, dtype)
    if mode == "lm1b":
        return WrapPacker(seq_len, pad, dtype, prefix_id=special["cls"], suffix_id=special["sep"])
    if mode == "owt":
        return WrapPacker(seq_len, pad, dtype, prefix_id=None, suffix_id=special["separator"])
    raise ValueError(f"unknown mode {mode!r}")


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True
