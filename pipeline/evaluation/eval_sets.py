"""Held-out evaluation sets (``--eval-set NAME=SOURCE[#detok=...][#field=...]``) as token sequences.

A SOURCE is

* a preprocess split directory (``PREPROCESSED/test``: MDS shards, read as they are);
* a raw text file of any name (one document per line: ``.txt``, WikiText's ``wiki.test.raw``, no
  extension) or a ``.jsonl`` file (the text field, default that of the export's preprocess run),
  optionally ``.gz``: detokenised, tokenised on the fly with the export's tokenizer and packed with
  the mode, ``seq_len``, wrap and special ids the export's preprocessed artifact records, so exactly
  as its training data were;
* ``hf:ID[:CONFIG][@SPLIT]`` (default split ``test``, the role of every eval set): the same, through
  ``datasets`` (online only; offline it is one clear error).

Raw files and ``hf:`` sets are read and packed by :mod:`pipeline.common.corpus`, the reader of the
preprocess stage too.

The detokeniser (:mod:`pipeline.evaluation.detokenizers`) is ``#detok=NAME`` or chosen by the set's
NAME (``lm1b``, ``ptb``, ``wikitext*``, ``lambada*``); split directories are never detokenised.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.common.artifacts import MANIFEST_NAME, ConfigError, StageError
from pipeline.common.corpus import CorpusSourceError, is_hf_source, iter_texts, make_packer

from .detokenizers import DETOKENIZERS, detokenizer_for

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
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
        """``hf`` | ``raw`` (a text / jsonl file, any name) | ``split`` (an MDS split directory).

        A directory is a split and a file is raw, whatever its extension; a missing path is judged by
        its name (with an extension, a file), so that its error names what is missing."""
        if is_hf_source(self.source):
            return "hf"
        path = Path(self.source)
        if path.is_dir():
            return "split"
        return "raw" if path.exists() or path.suffix else "split"


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
                          "raw text/jsonl files and hf: sets")
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
    if not path.exists():
        raise FileNotFoundError(f"--eval-set {spec.name}: no such file or directory {spec.source}")
    if not (path / "index.json").is_file():
        raise FileNotFoundError(f"--eval-set {spec.name}: {spec.source} is not an MDS split directory "
                                "(no index.json) nor a text/jsonl file nor hf:ID")
    if (path.parent / MANIFEST_NAME).is_file():
        return [], {f"eval_set:{spec.name}": path.parent}
    return sorted(p for p in path.rglob("*") if p.is_file()), {}


# --------------------------------------------------------------------------- raw text -> sequences
def packing_settings(export_config: dict) -> dict:
    """mode / seq_len / wrap / text field / special ids of the data the export was trained on: its config's
    ``data`` record (an older export: the preprocess manifest it names; pipeline/common/export_contents.py)."""
    from pipeline.common.export_contents import data_settings

    settings = data_settings(export_config)
    if not settings or not settings.get("mode") or not settings.get("seq_len"):
        raise ConfigError("a raw or hf: --eval-set is tokenised like the training data, but the export records no "
                          "data settings and names no readable preprocessed artifact; preprocess the set and pass "
                          "its split directory instead")
    return {**settings, "seq_len": int(settings["seq_len"]), "text_field": settings.get("text_field") or "text"}


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
    docs = iter_texts(spec.source, spec.text_field or settings["text_field"], role="test")
    packer = make_packer(settings["mode"], settings["wrap"], settings["seq_len"], settings["special_ids"], np.int64)
    try:
        seqs = tokenize_documents(docs, tok.backend, packer, DETOKENIZERS[spec.detokenizer], max_sequences)
    except CorpusSourceError as exc:
        raise EvalSetSourceError(f"--eval-set {spec.name}: {exc}") from None
    if len(seqs) == 0:
        raise EvalSetSourceError(f"--eval-set {spec.name}: {spec.source} holds no documents")
    return seqs
