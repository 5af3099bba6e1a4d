"""Turning token-id streams into fixed-length sequences (vectorised per batch).

Shared by the preprocess stage (training data) and the evaluate stage (raw held-out sets tokenised
on the fly with the export's tokenizer, packed exactly like the training data); the packer of each
``--mode`` is :func:`pipeline.common.corpus.make_packer`.

* ``pad``  (LM1B, the paper's setting): each sentence becomes ``[CLS] ids [SEP]``, truncated to
  ``seq_len`` (the ``[SEP]`` is kept) or right-padded with ``[PAD]``.
* ``wrap`` (OWT, and LM1B with ``--wrap`` as in BD3-LM): documents are concatenated into one
  stream and cut into ``seq_len`` chunks; the remainder is carried into the next batch and the
  final remainder is padded, so no token is dropped. In OWT mode each document is followed by the
  separator token; in LM1B-wrap mode each sentence is ``[CLS] ids [SEP]``.
"""
from __future__ import annotations

import numpy as np


class PadTruncatePacker:
    """One sequence per sentence: ``[CLS] ids [SEP]`` then truncate or pad to ``seq_len``."""

    def __init__(self, seq_len: int, cls_id: int, sep_id: int, pad_id: int, dtype):
        self.seq_len, self.cls_id, self.sep_id, self.pad_id, self.dtype = seq_len, cls_id, sep_id, pad_id, dtype

    def pack(self, flat: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, int]:
        """Return (sequences [n, seq_len], number of truncated sentences)."""
        n, body = len(lengths), self.seq_len - 2
        out = np.full((n, self.seq_len), self.pad_id, dtype=self.dtype)
        if n == 0:
            return out, 0
        keep = np.minimum(lengths, body)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        # Gather the first `keep[i]` ids of every sentence without a Python loop over tokens.
        row = np.repeat(np.arange(n), keep)
        offset = np.arange(int(keep.sum())) - np.repeat(np.cumsum(keep) - keep, keep)
        out[:, 0] = self.cls_id
        out[row, offset + 1] = flat[np.repeat(starts, keep) + offset]
        out[np.arange(n), keep + 1] = self.sep_id
        return out, int((lengths > body).sum())

    def finish(self) -> np.ndarray:
        return np.zeros((0, self.seq_len), dtype=self.dtype)


class WrapPacker:
    """Concatenate documents and cut into ``seq_len`` chunks, carrying the remainder over."""

    def __init__(self, seq_len: int, pad_id: int, dtype, prefix_id: int | None, suffix_id: int):
        self.seq_len, self.pad_id, self.dtype = seq_len, pad_id, dtype
        self.prefix_id, self.suffix_id = prefix_id, suffix_id
        self._carry = np.zeros(0, dtype=np.int64)

    def pack(self, flat: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, int]:
        n = len(lengths)
        extra = 1 + (self.prefix_id is not None)
        stream = np.empty(int(lengths.sum()) + extra * n, dtype=np.int64)
        ends = np.cumsum(lengths + extra)                       # one past each document's suffix
        stream[ends - 1] = self.suffix_id
        if self.prefix_id is not None:
            stream[ends - lengths - 2] = self.prefix_id
        body = np.ones(len(stream), dtype=bool)
        body[ends - 1] = False
        if self.prefix_id is not None:
            body[ends - lengths - 2] = False
        stream[body] = flat
        stream = np.concatenate([self._carry, stream])
        full = len(stream) // self.seq_len * self.seq_len
        self._carry = stream[full:]
        return stream[:full].reshape(-1, self.seq_len).astype(self.dtype), 0

    def finish(self) -> np.ndarray:
        """The padded final chunk (empty when the stream ended on a chunk boundary)."""
        if len(self._carry) == 0:
            return np.zeros((0, self.seq_len), dtype=self.dtype)
        out = np.full((1, self.seq_len), self.pad_id, dtype=self.dtype)
        out[0, :len(self._carry)] = self._carry
        self._carry = np.zeros(0, dtype=np.int64)
        return out
