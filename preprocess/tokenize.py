"""Batched tokenisation, in-process or in a pool of worker processes, in input order.

The tokenizer travels to workers as its JSON serialisation. Truncation and padding are switched
off explicitly: some shipped ``tokenizer.json`` files (the offline MiniLM's among them) enable
truncation to 128 and padding, which would silently cut every long document.
"""
from __future__ import annotations

import collections
import multiprocessing as mp
import os
import re
from typing import Iterable, Iterator

import numpy as np

_TOKENIZER = None
_WHITESPACE = re.compile(r"\s")


def make_backend(tokenizer_json: str):
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer_json)
    backend.no_truncation()
    backend.no_padding()
    return backend


def _init_worker(tokenizer_json: str) -> None:
    global _TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process = one core
    _TOKENIZER = make_backend(tokenizer_json)


def cut_long_text(text: str, max_chars: int) -> list[str]:
    """Cut a text into pieces of at most ~max_chars at whitespace.

    Cutting at whitespace leaves WordPiece/BPE-with-whitespace-pretokenisation output unchanged,
    while bounding the memory of a single encode call on pathological (e.g. 1 GB) lines.
    """
    if len(text) <= max_chars:
        return [text]
    pieces, start = [], 0
    while start < len(text):
        end = min(start + max_chars, len(text))
        if end < len(text):
            window = text[start + max_chars // 2:end]
            hits = [m.start() for m in _WHITESPACE.finditer(window)]
            if hits:
                end = start + max_chars // 2 + hits[-1]
        pieces.append(text[start:end])
        start = end
    return pieces


def encode_texts(backend, texts: list[str], max_chars: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of ``texts`` (no special tokens) as (flat int32 ids, int64 lengths)."""
    if max(map(len, texts), default=0) <= max_chars:  # the common case: one piece per text
        pieces, owner = texts, np.arange(len(texts))
    else:
        pieces, owner_list = [], []
        for i, text in enumerate(texts):
            for piece in cut_long_text(text, max_chars):
                pieces.append(piece)
                owner_list.append(i)
        owner = np.asarray(owner_list, dtype=np.int64)
    encodings = backend.encode_batch_fast(pieces, add_special_tokens=False)
    piece_ids = [e.ids for e in encodings]
    piece_len = np.fromiter(map(len, piece_ids), dtype=np.int64, count=len(piece_ids))
    lengths = np.bincount(owner, weights=piece_len, minlength=len(texts)).astype(np.int64)
    flat = (np.concatenate([np.asarray(ids, dtype=np.int32) for ids in piece_ids])
            if piece_ids else np.zeros(0, np.int32))
    return flat, lengths


def _encode_task(task: tuple[list[str], int]) -> tuple[np.ndarray, np.ndarray]:
    texts, max_chars = task
    return encode_texts(_TOKENIZER, texts, max_chars)


class OrderedEncoder:
    """Encodes batches of texts, yielding results in submission order with bounded memory.

    ``workers == 1`` encodes in this process (the Rust tokenizer then uses its own threads);
    ``workers > 1`` uses a process pool with at most ``2 * workers`` batches in flight, so peak
    memory does not grow with the corpus.
    """

    def __init__(self, tokenizer_json: str, workers: int, max_chars: int):
        self.workers, self.max_chars = workers, max_chars
        self._pool = None
        if workers > 1:
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            self._pool = ctx.Pool(workers, initializer=_init_worker, initargs=(tokenizer_json,))
            self._backend = None
        else:
            self._backend = make_backend(tokenizer_json)

    def map(self, batches: Iterable) -> Iterator[tuple[object, np.ndarray, np.ndarray]]:
        """``batches`` yields (payload, texts); this yields (payload, flat_ids, lengths)."""
        if self._pool is None:
            for payload, texts in batches:
                yield (payload, *encode_texts(self._backend, texts, self.max_chars))
            return
        pending: collections.deque = collections.deque()
        for payload, texts in batches:
            pending.append((payload, self._pool.apply_async(_encode_task, ((texts, self.max_chars),))))
            if len(pending) >= 2 * self.workers:
                payload0, result = pending.popleft()
                yield (payload0, *result.get())
        while pending:
            payload0, result = pending.popleft()
            yield (payload0, *result.get())

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
