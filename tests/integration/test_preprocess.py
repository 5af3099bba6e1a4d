"""The preprocess stage on real text, the real tokenizer and real MDS shards (CLI runs, a killed run,
worker pools; the stage's pure parts are in tests/unit/test_preprocess_parts.py)."""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.common.artifacts import ArtifactError, load_manifest
from preprocess.__main__ import main

from cli_utils import run_main
from mds_utils import read_split

REPO = Path(__file__).resolve().parents[2]


def _run(*args) -> int:
    return run_main(main, *args)


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _reference_lm1b(tok, lines: list[str], seq_len: int) -> np.ndarray:
    enc = tok(lines, truncation=True, max_length=seq_len, padding="max_length")["input_ids"]
    return np.asarray(enc, dtype=np.int64)


def test_lm1b_round_trip_and_counts(tmp_path, lm1b_lines, tokenizer):
    lines = lm1b_lines[:300] + ["word " * 200]  # the last one must be truncated
    src = _write_lines(tmp_path / "train.txt", lines)
    out = tmp_path / "art"
    assert _run("--input", src, "--out", out, "--mode", "lm1b", "--seq-len", 32) == 0
    got = read_split(out / "train")
    np.testing.assert_array_equal(got, _reference_lm1b(tokenizer, lines, 32))
    counts = np.load(out / "unigram_counts.npy", allow_pickle=False)
    assert counts.dtype == np.int64 and counts.shape == (len(tokenizer),)
    np.testing.assert_array_equal(counts, np.bincount(got[got != tokenizer.pad_token_id], minlength=len(tokenizer)))
    stats = json.loads((out / "train" / "stats.json").read_text())
    assert stats["documents"] == stats["sequences"] == len(lines)
    assert stats["truncated_documents"] == int((_lengths(tokenizer, lines) > 30).sum()) >= 1
    assert stats["tokens"] == int((got != tokenizer.pad_token_id).sum())
    manifest = load_manifest(out, stage="preprocess")
    assert manifest["token_dtype"] == "uint16" and manifest["tokenizer"]["vocab_size"] == 30522
    index = json.loads((out / "train" / "index.json").read_text())
    assert index["shards"][0]["column_encodings"] == ["ndarray:uint16:32"]
    assert index["shards"][0]["compression"].startswith("zstd") and index["shards"][0]["hashes"] == ["sha1"]


def _lengths(tok, lines):
    return np.asarray([len(x) for x in tok(lines, add_special_tokens=False)["input_ids"]])


def _wrapped_reference(tok, docs, seq_len, prefix, suffix):
    stream = []
    for ids in tok(docs, add_special_tokens=False)["input_ids"]:
        stream += ([prefix] if prefix is not None else []) + ids + [suffix]
    pad = (-len(stream)) % seq_len
    stream += [tok.pad_token_id] * pad
    return np.asarray(stream, dtype=np.int64).reshape(-1, seq_len)


def test_owt_mode_wraps_documents_with_separator(tmp_path, corpora, tokenizer):
    src = corpora / "web_sample" / "test.jsonl"
    all_docs = [json.loads(line)["text"] for line in src.open(encoding="utf-8")]
    out = tmp_path / "owt"
    assert _run("--input", src, "--out", out, "--mode", "owt", "--seq-len", 256, "--workers", 2) == 0
    got = read_split(out / "train")
    ref = _wrapped_reference(tokenizer, all_docs, 256, None, tokenizer.sep_token_id)
    np.testing.assert_array_equal(got, ref)
    assert (got[:-1] != tokenizer.pad_token_id).all()  # only the final chunk is padded


def test_lm1b_wrap_packs_sentences(tmp_path, lm1b_lines, tokenizer):
    lines = lm1b_lines[:200]
    out = tmp_path / "wrap"
    assert _run("--input", _write_lines(tmp_path / "s.txt", lines), "--out", out, "--mode", "lm1b",
                "--seq-len", 64, "--wrap", "--workers", 2, "--worker-kind", "process") == 0
    ref = _wrapped_reference(tokenizer, lines, 64, tokenizer.cls_token_id, tokenizer.sep_token_id)
    np.testing.assert_array_equal(read_split(out / "train"), ref)


def test_hash_split_is_disjoint_and_deterministic(tmp_path, lm1b_lines, tokenizer):
    lines = lm1b_lines[:400] + lm1b_lines[:50]  # duplicates must land in one split
    src = _write_lines(tmp_path / "in.txt", lines)
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert _run("--input", src, "--out", out, "--mode", "lm1b", "--seq-len", 128,
                    "--valid-fraction", 0.2, "--test-fraction", 0.2) == 0
        outs.append(out)
    rows = {s: {tuple(r) for r in read_split(outs[0] / s)} for s in ("train", "validation", "test")}
    assert rows["train"].isdisjoint(rows["validation"]) and rows["train"].isdisjoint(rows["test"])
    assert rows["validation"].isdisjoint(rows["test"])
    assert all(len(r) > 20 for r in rows.values())
    assert sum(json.loads((outs[0] / s / "stats.json").read_text())["documents"] for s in rows) == len(lines)
    for split in rows:  # deterministic: a second build is byte-identical
        np.testing.assert_array_equal(read_split(outs[0] / split), read_split(outs[1] / split))


def test_rerun_is_up_to_date_force_and_changed_input(tmp_path, lm1b_lines, capsys):
    src = _write_lines(tmp_path / "in.txt", lm1b_lines[:100])
    out = tmp_path / "art"
    args = ("--input", src, "--out", out, "--mode", "lm1b", "--seq-len", 32)
    assert _run(*args) == 0
    first = load_manifest(out)["timings"]["finished"], (out / "manifest.json").stat().st_mtime_ns
    capsys.readouterr()
    start = time.perf_counter()
    assert _run(*args) == 0
    assert "up to date" in capsys.readouterr().out and time.perf_counter() - start < 3
    assert (out / "manifest.json").stat().st_mtime_ns == first[1]
    assert _run(*args, "--force") == 0
    assert (out / "manifest.json").stat().st_mtime_ns != first[1]
    forced = (out / "manifest.json").stat().st_mtime_ns
    _write_lines(src, lm1b_lines[:101])  # changed input -> rebuild
    assert _run(*args) == 0
    assert (out / "manifest.json").stat().st_mtime_ns != forced
    assert len(read_split(out / "train")) == 101
    changed = (out / "manifest.json").stat().st_mtime_ns
    assert _run("--input", src, "--out", out, "--mode", "lm1b", "--seq-len", 48) == 0  # changed config
    assert (out / "manifest.json").stat().st_mtime_ns != changed
    assert load_manifest(out)["seq_len"] == 48


def test_killed_run_leaves_nothing_accepted(tmp_path, corpora):
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "preprocess", "--input", str(corpora / "web_sample" / "train.jsonl"),
           "--out", str(out), "--mode", "owt", "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO)
    deadline = time.time() + 60
    while time.time() < deadline and not any(tmp_path.glob(".killed.tmp-*/train")):
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert any(tmp_path.glob(".killed.tmp-*")), "the run should have been killed mid-way"
    with pytest.raises(ArtifactError, match="killed"):
        load_manifest(out)
    # a rerun cleans up the dead run's temp dir and produces a complete artifact
    small = _write_lines(tmp_path / "small.txt", ["one sentence .", "another one ."])
    assert _run("--input", small, "--out", out, "--mode", "owt", "--seq-len", 16) == 0
    assert load_manifest(out)["complete"] is True
    assert not list(tmp_path.glob(".killed.*"))


def test_bad_inputs(tmp_path, capsys):
    out = tmp_path / "o"
    assert _run("--input", tmp_path / "missing.txt", "--out", out, "--mode", "lm1b") == 2
    assert "missing.txt" in capsys.readouterr().err
    empty = _write_lines(tmp_path / "empty.txt", ["", "   ", ""])
    assert _run("--input", empty, "--out", out, "--mode", "lm1b") == 2
    err = capsys.readouterr().err
    assert "empty" in err and "Traceback" not in err
    assert not out.exists()
    assert _run("--input", empty, "--out", out, "--mode", "lm1b", "--valid-fraction", 1.5) == 2
    assert _run("--input", "hf:some/dataset", "--out", out, "--mode", "lm1b") == 2
    assert "hf:some/dataset" in capsys.readouterr().err


def test_undecodable_bytes_bad_json_gzip_and_huge_line(tmp_path, tokenizer):
    raw = b"good line one\nbad \xff\xfe bytes here\n\nlast line\n"
    (tmp_path / "a.txt").write_bytes(raw)
    with gzip.open(tmp_path / "b.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"text": "from gzip jsonl"}) + "\n{not json\n" + json.dumps({"other": 1}) + "\n")
    huge = "lorem ipsum dolor " * 200_000  # 3.6M characters on one line
    (tmp_path / "c.txt").write_text(huge + "\n")
    out = tmp_path / "o"
    assert _run("--input", str(tmp_path / "*.txt"), str(tmp_path / "b.jsonl.gz"), "--out", out,
                "--mode", "owt", "--seq-len", 512) == 0
    stats = json.loads((out / "train" / "stats.json").read_text())
    assert stats["decode_replaced_lines"] == 1
    assert stats["skipped_lines"] == {"bad_json": 1, "empty": 1, "missing_field": 1}
    assert stats["documents"] == 5
    got = read_split(out / "train")
    docs = ["good line one", "bad \ufffd\ufffd bytes here", "last line", huge.rstrip("\n"), "from gzip jsonl"]
    ref = _wrapped_reference(tokenizer, docs, 512, None, tokenizer.sep_token_id)
    np.testing.assert_array_equal(got, ref)


def test_folder_input_and_separate_test_split(tmp_path, lm1b_lines):
    folder = tmp_path / "corpus"
    folder.mkdir()
    _write_lines(folder / "part1.txt", lm1b_lines[:30])
    _write_lines(folder / "part2.txt", lm1b_lines[30:60])
    test = _write_lines(tmp_path / "test.txt", lm1b_lines[60:70])
    out = tmp_path / "o"
    assert _run("--input", folder, "--test-input", test, "--out", out, "--mode", "lm1b", "--seq-len", 32) == 0
    manifest = load_manifest(out)
    assert manifest["splits"] == ["train", "test"]
    assert manifest["stats"]["train"]["documents"] == 60 and manifest["stats"]["test"]["documents"] == 10
    assert len(manifest["inputs"]) == 3


def test_multi_node_groups_merge_to_the_single_run(tmp_path, lm1b_lines):
    src = _write_lines(tmp_path / "in.txt", lm1b_lines[:150])
    single, grouped = tmp_path / "single", tmp_path / "grouped"
    common = ("--input", src, "--mode", "lm1b", "--seq-len", 32, "--valid-fraction", 0.1)
    assert _run(*common, "--out", single) == 0
    for i in range(3):
        assert _run(*common, "--out", grouped, "--shard-index", i, "--num-shards", 3) == 0
    with pytest.raises(SystemExit):
        main(["merge", "--out", str(grouped), "--num-shards", "4"])  # group 3 of 4 does not exist
    assert main(["merge", "--out", str(grouped), "--num-shards", "3"]) == 0
    for split in ("train", "validation"):
        a, b = read_split(single / split), read_split(grouped / split)
        assert sorted(map(tuple, a)) == sorted(map(tuple, b))
    np.testing.assert_array_equal(np.load(single / "unigram_counts.npy"), np.load(grouped / "unigram_counts.npy"))
    assert load_manifest(grouped)["stats"]["train"]["documents"] == load_manifest(single)["stats"]["train"]["documents"]


def test_encoder_threads_and_processes_keep_order_and_restore_parallelism(lm1b_lines, tokenizer, monkeypatch):
    from preprocess.tokenize import OrderedEncoder

    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    lines = lm1b_lines[:600]
    batches = [(k, lines[k:k + 7]) for k in range(0, len(lines), 7)]  # 86 batches on 3 workers
    reference = tokenizer(lines, add_special_tokens=False)["input_ids"]  # 330 of them are cut at whitespace
    for kind in ("thread", "process"):
        with OrderedEncoder(tokenizer.backend_tokenizer.to_str(), workers=3, max_chars=120, kind=kind) as encoder:
            assert os.environ["TOKENIZERS_PARALLELISM"] == "false"  # each worker is one core
            results = list(encoder.map(iter(batches)))
        assert os.environ["TOKENIZERS_PARALLELISM"] == "true"
        assert [payload for payload, _, _ in results] == [k for k, _ in batches]
        lengths = np.concatenate([lens for _, _, lens in results])
        np.testing.assert_array_equal(lengths, [len(ids) for ids in reference])
        np.testing.assert_array_equal(np.concatenate([flat for _, flat, _ in results]), np.concatenate(reference))
    # A consumer that stops early (an error downstream) must not hang or leak the pool.
    with OrderedEncoder(tokenizer.backend_tokenizer.to_str(), workers=2, max_chars=1000) as encoder:
        next(encoder.map(iter(batches)))
