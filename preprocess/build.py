"""The preprocess stage as a library: corpus -> MDS shards per split + unigram counts.

Layout of the artifact (see docs/artifacts.md)::

    OUT/manifest.json
    OUT/unigram_counts.npy        int64 [V], train split, pad excluded
    OUT/stats.json                all splits + reading stats
    OUT/{train,validation,test}/  MDS shards (index.json, shard.*.mds.zstd) + stats.json
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from pipeline.common.artifacts import StageRun
from pipeline.common.corpus import is_hf_source, make_packer
from pipeline.common.hf_assets import load_tokenizer_spec

from .config import PreprocessConfig
from .readers import ReadStats, SplitRouter, input_size, iter_documents, resolve_inputs
from .tokenize import OrderedEncoder

STAGE = "preprocess"
GROUP_STAGE = "preprocess-group"
SCHEMA_VERSION = 1
SEQ_COLUMN = "tokens"


def token_dtype(vocab_size: int) -> str:
    """uint16 when every id fits (the bert vocabulary does), else int32."""
    return "uint16" if vocab_size < 65536 else "int32"


def group_dir(out: Path, index: int, count: int) -> Path:
    """Where group ``index`` of a multi-node run writes (a sibling of the merged artifact)."""
    return Path(f"{out}.groups") / f"group-{index:05d}-of-{count:05d}"


def token_row_writer(**kwargs):
    """An ``MDSWriter`` for one fixed-shape ndarray column whose per-sample encoding skips the
    generic path: for such a column ``MDSWriter.encode_sample`` returns exactly the row's raw bytes
    (no size header), but re-parses the encoding string for every sample, which was half of the
    main process's time on LM1B. A test checks both encodings are byte-identical."""
    from streaming import MDSWriter  # imported late: it pulls in torch

    class TokenRowWriter(MDSWriter):
        def __init__(self, **kw):
            super().__init__(**kw)
            (encoding,) = self.column_encodings
            _, dtype, shape = encoding.split(":")
            self._dtype, self._shape = np.dtype(dtype), (int(shape),)

        def encode_sample(self, sample: dict) -> bytes:
            row = sample[SEQ_COLUMN]
            if row.dtype != self._dtype or row.shape != self._shape:
                raise ValueError(f"expected {self._dtype}{list(self._shape)}, got {row.dtype}{list(row.shape)}")
            return np.ascontiguousarray(row).tobytes()

    return TokenRowWriter(**kwargs)


class _SplitWriter:
    """MDS writer + statistics + (train) unigram counts for one split."""

    def __init__(self, root: Path, split: str, cfg: PreprocessConfig, dtype: str, pad_id: int, vocab_size: int):
        self.dir = root / split
        self.writer = token_row_writer(out=str(self.dir), columns={SEQ_COLUMN: f"ndarray:{dtype}:{cfg.seq_len}"},
                                       compression=cfg.compression, hashes=["sha1"], size_limit=cfg.shard_size_limit)
        self.pad_id, self.seq_len = pad_id, cfg.seq_len
        self.counts = np.zeros(vocab_size, dtype=np.int64) if split == "train" else None
        self.sequences = self.tokens = self.truncated = 0

    def write(self, seqs: np.ndarray, truncated: int) -> None:
        for row in seqs:
            self.writer.write({SEQ_COLUMN: row})
        real = seqs[seqs != self.pad_id]
        self.sequences += len(seqs)
        self.tokens += int(real.size)
        self.truncated += truncated
        if self.counts is not None:
            self.counts += np.bincount(real.astype(np.int64), minlength=len(self.counts))

    def close(self, read: ReadStats, split: str) -> dict:
        self.writer.finish()
        slots = self.sequences * self.seq_len
        stats = {"split": split, **read.as_dict(), "sequences": self.sequences, "tokens": self.tokens,
                 "pad_fraction": round(1 - self.tokens / slots, 6) if slots else 0.0,
                 "truncated_documents": self.truncated}
        (self.dir / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        return stats


class _Progress:
    def __init__(self, enabled: bool, total_bytes: int):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total_bytes or None, unit="B", unit_scale=True, disable=not enabled,
                        desc="preprocess", mininterval=1.0, dynamic_ncols=True)
        self.docs = self.tokens = 0
        self.start = time.time()

    def __call__(self, nbytes: int) -> None:
        self.bar.update(nbytes)

    def add(self, docs: int, tokens: int) -> None:
        self.docs += docs
        self.tokens += tokens
        elapsed = max(time.time() - self.start, 1e-9)
        self.bar.set_postfix(docs_s=f"{self.docs / elapsed:,.0f}", tok_s=f"{self.tokens / elapsed:,.0f}",
                             refresh=False)

    def close(self) -> None:
        self.bar.close()


def _batches(chunks, batch_chars: int, max_docs: int = 2048):
    """Regroup chunks of (split, text) into batches of about ``batch_chars`` characters (at most
    ``max_docs`` documents) as (splits, texts): the unit of work of a tokeniser process.

    The first batches are smaller (1/8, 1/4, 1/2 of the limits) so that every worker has work and
    the first results come back early instead of after one full batch.
    """
    splits: list[str] = []
    texts: list[str] = []
    size, scale = 0, 8
    for chunk in chunks:
        for split, text in chunk:
            splits.append(split)
            texts.append(text)
            size += len(text)
            if size * scale >= batch_chars or len(texts) * scale >= max_docs:
                yield splits, texts
                splits, texts, size, scale = [], [], 0, max(1, scale // 2)
    if texts:
        yield splits, texts


def _batch_chars(cfg: PreprocessConfig, total_bytes: int) -> int:
    """Characters per tokenisation batch: ``cfg.batch_chars``, but on small corpora ~32 batches per
    worker, so that the last batch (encoded while the other workers idle) is short."""
    if not total_bytes:  # hf: inputs, size unknown
        return cfg.batch_chars
    group_bytes = total_bytes // cfg.num_shards
    return min(cfg.batch_chars, max(4096, group_bytes // (32 * cfg.workers)))


def _special_ids(spec, cfg: PreprocessConfig) -> dict:
    ids = spec.special_ids
    cls_id = ids.get("cls", ids.get("bos"))
    sep_id = ids.get("sep", ids.get("eos"))
    if cfg.separator is not None:
        if cfg.separator not in spec.vocab:
            raise ValueError(f"--separator {cfg.separator!r} is not a token of the tokenizer")
        separator = spec.vocab[cfg.separator]
    else:
        separator = sep_id
    needed = {"lm1b": (("cls/bos", cls_id), ("sep/eos", sep_id)), "owt": (("separator (sep/eos)", separator),)}
    missing = [name for name, value in needed[cfg.mode] if value is None]
    if missing:
        raise ValueError(f"tokenizer {cfg.tokenizer!r} lacks special tokens {missing} needed by --mode {cfg.mode}")
    # Without a pad token, id 0 pads; pad positions are excluded from counts either way.
    return {"cls": cls_id, "sep": sep_id, "separator": separator, "pad": ids.get("pad", 0)}


def run_preprocess(cfg: PreprocessConfig, out: str | Path, force: bool = False, log=print,
                   break_lock: bool = False) -> Path:
    """Build (or confirm up to date) the preprocess artifact; return its directory."""
    out = Path(out)
    grouped = cfg.num_shards > 1
    target = group_dir(out, cfg.shard_index, cfg.num_shards) if grouped else out
    sources = {split: resolve_inputs(specs) for split, specs in cfg.inputs.items() if specs}
    file_inputs = [Path(s) for specs in sources.values() for s in specs if not is_hf_source(s)]
    # A local tokenizer loads in ~0.1 s without transformers, so "up to date" stays fast.
    spec = load_tokenizer_spec(cfg.tokenizer)
    run = StageRun(GROUP_STAGE if grouped else STAGE, target, config=cfg.artifact_config(), inputs=file_inputs,
                   tokenizer=spec.info(), schema_version=SCHEMA_VERSION, force=force, break_lock=break_lock)
    if run.is_up_to_date():
        log(f"{target}: up to date (use --force to rebuild)")
        return target

    vocab_size = spec.vocab_size
    special = _special_ids(spec, cfg)
    dtype = token_dtype(vocab_size)
    read_stats = {split: ReadStats() for split in ("train", "validation", "test")}
    total_bytes = sum(input_size(s) for s in sources.values())
    batch_chars = _batch_chars(cfg, total_bytes)
    with run as tmp:
        # Writers first: they import streaming (~5 s of torch/transformers), which the progress
        # bar's docs/s and tokens/s must not count.
        writers = {split: _SplitWriter(tmp, split, cfg, dtype, special["pad"], vocab_size) for split in cfg.splits}
        packers = {split: make_packer(cfg.mode, cfg.wrap, cfg.seq_len, special, np.dtype(dtype))
                   for split in cfg.splits}
        progress = _Progress(cfg.progress, total_bytes)
        try:
            with OrderedEncoder(spec.backend, cfg.workers, cfg.max_doc_chars, cfg.worker_kind) as encoder:
                for split_name, split_sources in sources.items():
                    hash_split = split_name == "train" and (cfg.valid_fraction or cfg.test_fraction)
                    router = SplitRouter(None if hash_split else split_name,
                                         cfg.valid_fraction, cfg.test_fraction, cfg.split_seed)
                    docs = iter_documents(split_sources, router, read_stats, cfg.text_field,
                                          group=(cfg.shard_index, cfg.num_shards), progress=progress,
                                          role=split_name)
                    for splits, flat, lengths in encoder.map(_batches(docs, batch_chars)):
                        _route_batch(splits, flat, lengths, packers, writers)
                        progress.add(len(lengths), int(lengths.sum()))
            stats = {}
            for split in cfg.splits:
                writers[split].write(packers[split].finish(), 0)
                stats[split] = writers[split].close(read_stats[split], split)
        finally:
            progress.close()
        _check_not_empty(stats, cfg)
        np.save(tmp / "unigram_counts.npy", writers["train"].counts)
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        run.extra.update(splits=cfg.splits, seq_len=cfg.seq_len, token_dtype=dtype, column=SEQ_COLUMN,
                         special_ids=special, stats=stats)
    log(_summary(target, stats))
    return target


def _route_batch(splits: list[str], flat: np.ndarray, lengths: np.ndarray, packers, writers) -> None:
    """Send each document of a mixed-split batch to its split's packer, keeping input order."""
    labels = np.asarray(splits)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    for split in np.unique(labels):
        idx = np.flatnonzero(labels == split)
        if len(idx) == len(labels):
            sub_flat, sub_len = flat, lengths
        else:
            pieces = [flat[starts[i]:starts[i + 1]] for i in idx]
            sub_flat = np.concatenate(pieces) if pieces else flat[:0]
            sub_len = lengths[idx]
        seqs, truncated = packers[split].pack(sub_flat, sub_len)
        writers[split].write(seqs, truncated)


def _check_not_empty(stats: dict, cfg: PreprocessConfig) -> None:
    for split, st in stats.items():
        if st["sequences"] == 0:
            what = "the corpus" if split == "train" else f"the {split} split"
            hint = "" if split == "train" else " (raise its fraction or give it its own input)"
            if cfg.num_shards > 1:
                hint += f" in group {cfg.shard_index} of {cfg.num_shards}"
            raise ValueError(f"{what} is empty: no document survived reading{hint}; skipped lines: "
                             f"{st['skipped_lines'] or 'none'}")


def _summary(target: Path, stats: dict) -> str:
    parts = [f"{s}: {v['documents']:,} docs -> {v['sequences']:,} seqs, {v['tokens']:,} tokens, "
             f"pad {v['pad_fraction']:.1%}" for s, v in stats.items()]
    return f"{target}: written\n  " + "\n  ".join(parts)
