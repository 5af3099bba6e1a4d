"""Reading documents from .txt / .jsonl (optionally gzip) files and ``hf:`` datasets.

Every input line is one document. Lines are read as bytes so that undecodable bytes can be
replaced *and counted* instead of crashing the run. Each line is routed to a split (a
deterministic hash of the document text, so duplicates land in the same split) and, for
multi-node runs, to a group (line ordinal modulo the number of groups, decided before the line
is parsed so that other groups' lines cost only the read).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.common.artifacts import expand_inputs

INPUT_SUFFIXES = (".txt", ".jsonl", ".json", ".text")


@dataclass
class ReadStats:
    """Per-split reading statistics (what was skipped and why)."""

    lines: int = 0
    documents: int = 0
    decode_replaced: int = 0     # lines with undecodable bytes, replaced by U+FFFD and kept
    skipped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict:
        return {"lines": self.lines, "documents": self.documents,
                "decode_replaced_lines": self.decode_replaced,
                "skipped_lines": dict(sorted(self.skipped.items()))}


def resolve_inputs(specs: list[str]) -> list[str]:
    """Expand paths/folders/globs to files (errors name the missing input); keep ``hf:`` specs."""
    out: list[str] = []
    for spec in specs:
        if spec.startswith("hf:"):
            out.append(spec)
        else:
            out.extend(str(p) for p in expand_inputs([spec], suffixes=INPUT_SUFFIXES))
    return out


def split_fraction(text: str, seed: int) -> float:
    """Deterministic uniform number in [0, 1) from a document's text (the hash split)."""
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8,
                             salt=seed.to_bytes(8, "little")).digest()
    return int.from_bytes(digest, "little") / 2.0**64


class SplitRouter:
    """Assigns a document to train/validation/test by hash, or to a fixed split."""

    def __init__(self, fixed: str | None, valid_fraction: float, test_fraction: float, seed: int):
        self.fixed, self.valid, self.test, self.seed = fixed, valid_fraction, test_fraction, seed

    def __call__(self, text: str) -> str:
        if self.fixed is not None:
            return self.fixed
        u = split_fraction(text, self.seed)
        if u < self.test:
            return "test"
        if u < self.test + self.valid:
            return "validation"
        return "train"


def _open_binary(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _is_jsonl(path: str) -> bool:
    name = path[:-3] if path.endswith(".gz") else path
    return name.endswith((".jsonl", ".json"))


def iter_documents(sources: list[str], router: SplitRouter, stats: dict[str, ReadStats],
                   text_field: str, group: tuple[int, int] = (0, 1),
                   progress=None) -> Iterator[list[tuple[str, str]]]:
    """Yield lists of ``(split, text)``, every accepted document of this group in input order.

    Documents come in chunks (one per ~1 MiB of input) so that the per-line work stays a tight
    loop. ``stats`` (split -> ReadStats) is updated in place; skipped lines are attributed to the
    split their raw bytes hash to, so that every split's stats.json accounts for its own lines.
    """
    index, count = group
    ordinal = -1
    for source in sources:
        for chunk, from_hf in _iter_raw_chunks(source, text_field):
            if progress is not None:
                progress(sum(len(r) for r in chunk if isinstance(r, (bytes, str))))
            docs = []
            for raw in chunk:
                ordinal += 1
                if count > 1 and ordinal % count != index:
                    continue
                text, reason, replaced = _decode(raw, source, text_field, from_hf)
                if reason is not None:
                    st = stats[router(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw))]
                    st.lines += 1
                    st.skipped[reason] += 1
                    continue
                split = router(text)
                st = stats[split]
                st.lines += 1
                st.documents += 1
                st.decode_replaced += replaced
                docs.append((split, text))
            if docs:
                yield docs


def _iter_raw_chunks(source: str, text_field: str, chunk_bytes: int = 1 << 20) -> Iterator[tuple[list, bool]]:
    if source.startswith("hf:"):
        chunk: list = []
        for text in _iter_hf(source, text_field):
            chunk.append(text)
            if len(chunk) == 1024:
                yield chunk, True
                chunk = []
        if chunk:
            yield chunk, True
        return
    with _open_binary(source) as fh:
        try:
            while lines := fh.readlines(chunk_bytes):
                yield lines, False
        except (OSError, EOFError) as exc:  # truncated / corrupt gzip
            raise ValueError(f"cannot read {source!r}: {exc}") from None


def _decode(raw, source: str, text_field: str, from_hf: bool) -> tuple[str, str | None, int]:
    """Return (text, skip_reason or None, replaced_flag)."""
    if from_hf:
        text = raw if isinstance(raw, str) else None
        if text is None:
            return "", "missing_field", 0
        return (text, None, 0) if text.strip() else ("", "empty", 0)
    replaced = 0
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        line, replaced = raw.decode("utf-8", "replace"), 1
    if line.startswith("\ufeff"):
        line = line[1:]
    if _is_jsonl(source):
        if not line.strip():
            return "", "empty", 0
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            return "", "bad_json", 0
        text = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            return "", "missing_field", 0
        if _has_surrogates(text):  # lone surrogates from JSON escapes cannot be tokenised
            text, replaced = text.encode("utf-8", "replace").decode("utf-8"), 1
    else:
        text = line.rstrip("\r\n")
    if not text.strip():
        return "", "empty", 0
    return text, None, replaced


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _iter_hf(spec: str, text_field: str) -> Iterator[str]:
    """``hf:NAME[:CONFIG][@SPLIT]`` through the ``datasets`` library (streaming)."""
    body = spec[3:]
    split = "train"
    if "@" in body:
        body, split = body.rsplit("@", 1)
    name, _, config = body.partition(":")
    try:
        import datasets  # optional dependency: pip install semdlm[hf]
    except ImportError:
        raise ValueError(f"{spec!r} needs the 'datasets' package (pip install 'semdlm[hf]')") from None
    try:
        ds = datasets.load_dataset(name, config or None, split=split, streaming=True)
        iterator = iter(ds)
        first = next(iterator, None)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types when offline
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE is set)" if offline else " (no network or unknown dataset?)"
        raise ValueError(f"cannot load Hugging Face dataset {spec!r}{hint}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if first is None:
        return
    for record in ([first], iterator):
        for rec in record:
            value = rec.get(text_field)
            yield value if isinstance(value, str) else None


def input_size(sources: list[str]) -> int:
    return sum(Path(s).stat().st_size for s in sources if not s.startswith("hf:"))
