"""Token classes of a WordPiece vocabulary and the vocabulary-identity check.

Definitions (documented in docs/artifacts.md, "neighbor_index"):

* **special**: a named special token of the tokenizer ([PAD] [CLS] [SEP] [MASK] [UNK], bos/eos if
  any) or a placeholder ``[unusedN]``;
* **continuation**: a WordPiece continuation piece ``##x``;
* **punctuation-only**: no letter and no digit in the token (``.``, ``--``, ``$``, ``©``);
* **valid** (``valid_vocab.npy``, allowed as a neighbour and as prior support): none of the above.
  Continuation pieces are not neighbour targets: a ``##x`` piece glues onto the previous word, so
  swapping a whole word for one produces broken words rather than a semantic substitute, and with
  surface-form embeddings ``king`` and ``##king`` are identical vectors that would crowd the top
  of every neighbour list. (The paper's Eq 119 removes them from the unigram prior as well.)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.common.hf_assets import PLACEHOLDER_TOKEN, load_tokenizer_spec, resolve_name

_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")


@dataclass
class Vocabulary:
    """Token strings by id plus the identity (vocab hash) they were read with."""

    tokens: list[str]
    special_ids: dict[str, int]
    identity: str | None
    source: str

    @property
    def size(self) -> int:
        return len(self.tokens)


@dataclass
class TokenClasses:
    """Boolean masks [V] of the token classes defined in the module docstring."""

    special: np.ndarray
    continuation: np.ndarray
    punctuation: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """Neighbour targets and prior support (before the min-count cut)."""
        return ~(self.special | self.continuation | self.punctuation)


def classify_tokens(tokens: list[str], special_ids) -> TokenClasses:
    """The token classes of a vocabulary (one pass over the strings, done once per stage run)."""
    special = np.zeros(len(tokens), dtype=bool)
    special[np.asarray(sorted(set(special_ids)), dtype=np.int64)] = True
    special |= np.fromiter((bool(PLACEHOLDER_TOKEN.match(t)) for t in tokens), dtype=bool, count=len(tokens))
    continuation = np.fromiter((t.startswith("##") and len(t) > 2 for t in tokens), dtype=bool, count=len(tokens))
    punctuation = np.fromiter((not any(c.isalnum() for c in t) for t in tokens), dtype=bool, count=len(tokens))
    return TokenClasses(special=special, continuation=continuation & ~special,
                        punctuation=punctuation & ~special & ~continuation)


def surface_form(token: str) -> str:
    """What the embedder reads for a token: ``##x`` continuation pieces by their surface ``x``."""
    return token[2:] if token.startswith("##") and len(token) > 2 else token


def vocabulary_from_tokenizer(name_or_path: str | None) -> Vocabulary:
    """Token strings and identity of a tokenizer (local dirs are read without transformers)."""
    spec = load_tokenizer_spec(name_or_path)
    tokens = [""] * len(spec.vocab)
    for token, idx in spec.vocab.items():
        if not 0 <= idx < len(tokens):
            raise ValueError(f"tokenizer {spec.name_or_path!r} has non-contiguous ids (id {idx} for {token!r})")
        tokens[idx] = token
    return Vocabulary(tokens, dict(spec.special_ids), spec.info()["identity"], spec.name_or_path)


def has_tokenizer(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and any((path / name).is_file() for name in _TOKENIZER_FILES)


def model_vocab_identity(path: str | Path) -> tuple[str | None, str]:
    """Vocabulary identity of a model directory and where it came from.

    A tokenizer shipped with the model wins; else a semdlm manifest's recorded tokenizer
    identity; else ``(None, "none")`` — the caller can then only check the vocabulary size.
    """
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    if has_tokenizer(directory):
        return vocabulary_from_tokenizer(str(directory)).identity, f"tokenizer in {directory}"
    manifest = directory / "manifest.json"
    if manifest.is_file():
        try:
            identity = (json.loads(manifest.read_text()).get("tokenizer") or {}).get("identity")
        except (OSError, json.JSONDecodeError):
            identity = None
        if identity:
            return identity, f"tokenizer identity recorded in {manifest}"
    return None, "none"


def check_identity(expected: dict, found: str | None, found_where: str, what: str) -> None:
    """Refuse an embedder whose vocabulary is not the one the preprocess artifact was built with."""
    if found is not None and found != expected.get("identity"):
        raise ValueError(
            f"vocabulary mismatch: the preprocess artifact was tokenised with "
            f"{expected.get('name_or_path')!r} ({expected.get('identity')}, {expected.get('vocab_size')} tokens) "
            f"but the {what} uses {found_where} ({found}); neighbours would be computed for the wrong "
            f"token ids. Use an embedder with the same vocabulary or re-run preprocess with its tokenizer.")


def upstream_vocabulary(tokenizer_info: dict) -> Vocabulary:
    """The vocabulary recorded by the preprocess artifact, re-read and identity-checked."""
    vocab = vocabulary_from_tokenizer(resolve_name(tokenizer_info.get("name_or_path")))
    check_identity(tokenizer_info, vocab.identity, f"tokenizer {vocab.source!r}", "re-loaded tokenizer")
    return vocab
