"""The preprocess stage's view of its inputs: expansion, split routing, group selection, statistics.

Reading and decoding are :mod:`pipeline.common.corpus` (shared with the evaluation sets): every
input line (or ``hf:`` record) is one document. Each one is routed to a split (a deterministic
hash of the document text, so duplicates land in the same split) and, for multi-node runs, to a
group (line ordinal modulo the number of groups, decided before the line is parsed so that other
groups' lines cost only the read); what was skipped, and why, is counted per split.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.common.artifacts import expand_inputs
from pipeline.common.corpus import decode, is_hf_source, iter_raw_chunks, source_format

# what a folder input contributes (a file named on the command line may have any name, e.g. wiki.test.raw)
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
        if is_hf_source(spec):
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


def iter_documents(sources: list[str], router: SplitRouter, stats: dict[str, ReadStats],
                   text_field: str, group: tuple[int, int] = (0, 1),
                   progress=None, role: str = "train") -> Iterator[list[tuple[str, str]]]:
    """Yield lists of ``(split, text)``, every accepted document of this group in input order.

    Documents come in chunks (one per ~1 MiB of input) so that the per-line work stays a tight
    loop. ``stats`` (split -> ReadStats) is updated in place; skipped lines are attributed to the
    split their raw bytes hash to, so that every split's stats.json accounts for its own lines.
    ``role``: the split the sources were given for (an ``hf:`` source's default split).
    """
    index, count = group
    ordinal = -1
    for source in sources:
        fmt = source_format(source)
        for chunk in iter_raw_chunks(source, text_field, role):
            if progress is not None:
                progress(sum(len(r) for r in chunk if isinstance(r, (bytes, str))))
            docs = []
            for raw in chunk:
                ordinal += 1
                if count > 1 and ordinal % count != index:
                    continue
                text, reason, replaced = decode(raw, fmt, text_field)
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


def input_size(sources: list[str]) -> int:
    return sum(Path(s).stat().st_size for s in sources if not is_hf_source(s))
