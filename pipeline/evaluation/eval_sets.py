"""Held-out evaluation sets (``--eval-set NAME=SOURCE[#detok=...][#field=...]``) as token sequences.

A SOURCE is

* a preprocess split directory (``PREPROCESSED/test``: MDS shards, read as they are);
* a raw ``.txt`` (one document per line) or ``.jsonl`` (the text field, default that of the
  export's preprocess run) file, optionally ``.gz``: detokenised, tokenised on the fly with the
  export's tokenizer and packed by :mod:`pipeline.common.packing` with the mode, ``seq_len``, wrap
  and special ids the export's preprocessed artifact records, so exactly as its training data were;
* ``hf:ID[:CONFIG][@SPLIT]`` (default split ``test``): the same, through ``datasets`` (online only;
  offline it is one clear error).

The detokeniser (:mod:`pipeline.evaluation.detokenizers`) is ``#detok=NAME`` or chosen by the set's
NAME (``lm1b``, ``ptb``, ``wikitext*``, ``lambada*``); split directories are never detokenised.
"""
from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.common.artifacts import MANIFEST_NAME, ConfigError, StageError

from .detokenizers import DETOKENIZERS, detokenizer_for

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_RAW_SUFFIXES = (".txt", ".jsonl", ".json")
_BATCH_DOCS = 1024


class EvalSetSourceError(StageError, RuntimeError):
    """An eval set's source cannot be read (an ``hf:`` set offline, a missing package, an empty set)."""


@dataclass(frozen=True)
class EvalSetSpec:
    name: str
    source: str
    detokenizer: str = "none"
    text_field: str | None = None  # None: the export's preprocess text field (jsonl / hf)

    @property
    def kind(self) -> str:
        """``hf`` | ``raw`` (a .txt / .jsonl file) | ``split`` (an MDS split directory)."""
        if self.source.startswith("hf:"):
            return "hf"
        stem = self.source[:-3] if self.source.endswith(".gz") else self.source
        return "raw" if stem.endswith(_RAW_SUFFIXES) else "split"


def parse_eval_set(arg: str) -> EvalSetSpec:
    """``NAME=SOURCE[#detok=lm1b|ptb|wikitext|lambada|none][#field=F]`` -> :class:`EvalSetSpec`."""
    name, eq, rest = arg.partition("=")
    if not eq or not name or not rest:
        raise ConfigError(f"--eval-set wants NAME=SOURCE, got {arg!r}")
    if not _NAME.match(name):
        raise ConfigError(f"--eval-set name {name!r}: use letters, digits, '_', '-', '.'")
    source, *options = rest.split("#")
    if not source:
        raise ConfigError(f"--eval-set {arg!r}: empty SOURCE")
    opts = {}
    for opt in options:
        key, eq, value = opt.partition("=")
        if key not in ("detok", "field") or not eq or not value:
            raise ConfigError(f"--eval-set {arg!r}: unknown option {opt!r} (#detok=NAME or #field=NAME)")
        opts[key] = value
    if opts.get("detok") is not None and opts["detok"] not in DETOKENIZERS:
        raise ConfigError(f"--eval-set {arg!r}: unknown detokenizer {opts['detok']!r}; "
                          f"choose from {sorted(DETOKENIZERS)}")
    spec = EvalSetSpec(name, source, "none", opts.get("field"))
    detok = detokenizer_for(name, opts.get("detok")) if spec.kind != "split" else "none"
    if spec.kind == "split" and opts.get("detok", "none") != "none":
        raise ConfigError(f"--eval-set {arg!r}: a split directory is already tokenised; #detok applies to "
                          "raw .txt/.jsonl files and hf: sets")
    return EvalSetSpec(name, source, detok, opts.get("field"))


def parse_eval_sets(args) -> tuple[EvalSetSpec, ...]:
    specs = tuple(a if isinstance(a, EvalSetSpec) else parse_eval_set(a) for a in args or ())
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"--eval-set names must be unique, repeated: {duplicates}")
    return specs


def freshness_inputs(spec: EvalSetSpec) -> tuple[list[Path], dict[str, Path]]:
    """(input files to fingerprint, upstream artifacts to pin) of a set: a changed source makes the
    evaluation stale. A split of an artifact pins the artifact's manifest; a bare split directory
    fingerprints its files; an ``hf:`` set has nothing local to pin."""
    if spec.kind == "hf":
        return [], {}
    path = Path(spec.source)
    if spec.kind == "raw":
        if not path.is_file():
            raise FileNotFoundError(f"--eval-set {spec.name}: no such file {spec.source}")
        return [path], {}
    if not (path / "index.json").is_file():
        raise FileNotFoundError(f"--eval-set {spec.name}: {spec.source} is not an MDS split directory "
                                "(no index.json) nor a .txt/.jsonl file nor hf:ID")
    if (path.parent / MANIFEST_NAME).is_file():
        return [], {f"eval_set:{spec.name}": path.parent}
    return sorted(p for p in path.rglob("*") if p.is_file()), {}


# --------------------------------------------------------------------------- raw text -> sequences
def packing_settings(export_config: dict) -> dict:
    """mode / seq_len / wrap / text field / special ids of the data the export was trained on."""
    pre = (export_config.get("artifacts") or {}).get("preprocessed")
    if not pre or not (Path(pre) / MANIFEST_NAME).is_file():
        raise ConfigError("a raw or hf: --eval-set is tokenised like the training data, but the export names no "
                          "readable preprocessed artifact; preprocess the set and pass its split directory instead")
    manifest = json.loads((Path(pre) / MANIFEST_NAME).read_text())
    cfg = manifest.get("config") or {}
    return {"mode": cfg["mode"], "seq_len": int(cfg["seq_len"]), "wrap": bool(cfg.get("wrap")),
            "text_field": cfg.get("text_field", "text"), "special_ids": manifest["special_ids"],
            "tokenizer": cfg.get("tokenizer")}


def make_packer(settings: dict):
    """The packer preprocess used (preprocess/build.py ``_make_packer``) for these settings."""
    from pipeline.common.packing import PadTruncatePacker, WrapPacker

    sp, seq_len = settings["special_ids"], settings["seq_len"]
    if settings["mode"] == "lm1b" and not settings["wrap"]:
        return PadTruncatePacker(seq_len, sp["cls"], sp["sep"], sp["pad"], np.int64)
    if settings["mode"] == "lm1b":
        return WrapPacker(seq_len, sp["pad"], np.int64, prefix_id=sp["cls"], suffix_id=sp["sep"])
    return WrapPacker(seq_len, sp["pad"], np.int64, prefix_id=None, suffix_id=sp["separator"])


def _iter_file(path: str, field: str) -> Iterator[str]:
    """Documents of a .txt (a line each) or .jsonl (``field`` of each record) file; empty ones skipped."""
    jsonl = (path[:-3] if path.endswith(".gz") else path).endswith((".jsonl", ".json"))
    with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as fh:
        for raw in fh:
            line = raw.decode("utf-8", "replace").removeprefix("\ufeff")
            if jsonl:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                text = record.get(field) if isinstance(record, dict) else None
            else:
                text = line.rstrip("\r\n")
            if isinstance(text, str) and text.strip():
                yield text


def _iter_hf(spec: EvalSetSpec, field: str) -> Iterator[str]:
    """``hf:ID[:CONFIG][@SPLIT]`` (default split ``test``) through ``datasets``, streaming."""
    body, split = spec.source[3:], "test"
    if "@" in body:
        body, split = body.rsplit("@", 1)
    name, _, config = body.partition(":")
    try:
        import datasets  # optional: pip install 'semdlm[hf]'
    except ImportError:
        raise EvalSetSourceError(f"--eval-set {spec.name}: {spec.source!r} needs the 'datasets' package "
                                 "(pip install 'semdlm[hf]')") from None
    offline = any(os.environ.get(v) == "1" for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    try:
        iterator = iter(datasets.load_dataset(name, config or None, split=split, streaming=True))
        first = next(iterator, None)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types when offline
        hint = " (HF_HUB_OFFLINE is set)" if offline else " (no network or unknown dataset?)"
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise EvalSetSourceError(f"--eval-set {spec.name}: cannot load Hugging Face dataset {spec.source!r}{hint}: "
                                 f"{type(exc).__name__}: {first_line}") from None
    for rec in ([first] if first is not None else []):
        yield from _record_text(rec, field)
    for rec in iterator:
        yield from _record_text(rec, field)


def _record_text(record: dict, field: str) -> Iterator[str]:
    text = record.get(field)
    if text is None and field == "text":
        text = record.get("sentence")  # ptb_text_only names its field "sentence"
    if isinstance(text, str) and text.strip():
        yield text


def tokenize_documents(docs, backend, packer, detokenize, max_sequences: int | None = None) -> torch.Tensor:
    """Detokenise, encode (no special tokens; truncation and padding off) and pack ``docs`` into
    Long[N, seq_len] exactly as preprocess packs training data; stops after ``max_sequences``."""
    backend.no_truncation()
    backend.no_padding()
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    chunks, count, batch = [], 0, []

    def flush(texts):
        ids = [e.ids for e in encode(texts, add_special_tokens=False)]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter((i for seq in ids for i in seq), dtype=np.int64, count=int(lengths.sum()))
        seqs, _ = packer.pack(flat, lengths)
        return seqs

    for doc in docs:
        batch.append(detokenize(doc))
        if len(batch) == _BATCH_DOCS:
            chunks.append(flush(batch))
            count += len(chunks[-1])
            batch = []
            if max_sequences is not None and count >= max_sequences:
                break
    else:
        if batch:
            chunks.append(flush(batch))
        chunks.append(packer.finish())
    out = np.concatenate(chunks) if chunks else np.zeros((0, 1), np.int64)
    if max_sequences is not None:
        out = out[:max_sequences]
    return torch.from_numpy(np.ascontiguousarray(out, dtype=np.int64))


def load_eval_set(spec: EvalSetSpec, export_config: dict, tokenizer_info: dict,
                  max_sequences: int | None = None) -> torch.Tensor:
    """The sequences of one eval set, Long[N, L] (a split as stored; raw / hf: tokenised on the fly)."""
    from .nelbo import read_test_sequences

    if spec.kind == "split":
        return read_test_sequences(spec.source, max_sequences)
    from pipeline.common.hf_assets import load_tokenizer_spec

    settings = packing_settings(export_config)
    tok = load_tokenizer_spec(tokenizer_info.get("name_or_path") or settings["tokenizer"])
    if tokenizer_info.get("identity") and tok.info()["identity"] != tokenizer_info["identity"]:
        raise ConfigError(f"--eval-set {spec.name}: tokenizer {tok.name_or_path!r} is not the export's "
                          "(vocabulary identity differs)")
    field = spec.text_field or settings["text_field"]
    docs = _iter_hf(spec, field) if spec.kind == "hf" else _iter_file(spec.source, field)
    seqs = tokenize_documents(docs, tok.backend, make_packer(settings), DETOKENIZERS[spec.detokenizer],
                              max_sequences)
    if len(seqs) == 0:
        raise EvalSetSourceError(f"--eval-set {spec.name}: {spec.source} holds no documents")
    return seqs
