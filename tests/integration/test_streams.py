"""A 70/30 mixture of two real corpora through real streaming and real DeepSpeed (2 CPU ranks, ZeRO-2).

Two preprocess artifacts (LM1B sentences, web documents; lm1b mode, 32 tokens) are uploaded with
``preprocess --remote`` to a local directory that stands in for the bucket, and the local builds are
deleted: training reads only the "remote", through each stream's own cache (streaming's download
path, without a network). An uninterrupted run is compared with one SIGKILLed at the start of step 7
(pipeline.common.faults), whose cache is then wiped (a fresh node) before it resumes from step 4:

* losses, validation NELBO and per-rank sample ids equal the uninterrupted run's, bit for bit;
* one epoch (12 steps x 16 = 192 samples, streaming's ``epoch_size``: the streams' total) draws from
  stream s exactly ``choose_s`` = 192 x p_s samples (rounded, RUN_DIR/streams.json), and within it every
  sample of s is drawn floor(choose_s / n_s) or ceil(choose_s / n_s) times: the 64-sentence LM1B
  stream (134 or 135 draws) every sentence 2 or 3 times, the 128-document web stream (57 or 58 draws)
  no document twice. Nothing of either stream repeated or skipped beyond that.

Also: a multi-node preprocess uploads its merged artifact (``merge --remote``), not its groups.
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from bench.soak import DEEPSPEED, _free_port, launch
from pipeline.common.faults import Fault
from preprocess.__main__ import main as preprocess_main

from cli_utils import run_main

REPO = Path(__file__).resolve().parents[2]
SIZES = {"lm1b": (64, 16), "web": (128, 16)}      # train, validation sequences per stream
PROPORTIONS = {"lm1b": 0.7, "web": 0.3}
STEPS, GLOBAL = 12, 16                              # one epoch: (64 + 128) / 16 steps


def _write_inputs(corpora: Path, folder: Path) -> dict[str, tuple[Path, Path]]:
    lines = [x for x in (corpora / "lm1b_sample" / "train.txt").read_text().splitlines() if x.strip()]
    docs = [x for x in (corpora / "web_sample" / "train.jsonl").read_text().splitlines()
            if json.loads(x)["text"].strip()]
    out = {}
    for name, rows, ext in (("lm1b", lines, "txt"), ("web", docs, "jsonl")):
        n_train, n_valid = SIZES[name]
        train, valid = folder / f"{name}_train.{ext}", folder / f"{name}_valid.{ext}"
        train.write_text("\n".join(rows[:n_train]) + "\n")
        valid.write_text("\n".join(rows[n_train:n_train + n_valid]) + "\n")
        out[name] = (train, valid)
    return out


@pytest.fixture(scope="module")
def remote(tmp_path_factory, corpora) -> Path:
    """Both artifacts built, uploaded with ``preprocess --remote``, the local builds removed."""
    work = tmp_path_factory.mktemp("streams")
    remote = work / "bucket"
    for name, (train, valid) in _write_inputs(corpora, work).items():
        proc = subprocess.run([sys.executable, "-m", "preprocess", "--input", str(train), "--valid-input", str(valid),
                               "--out", str(work / "build" / name), "--mode", "lm1b", "--seq-len", "32",
                               "--no-progress", "--remote", str(remote / name)],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"{remote / name}: uploaded" in proc.stdout
    shutil.rmtree(work / "build")
    for name, (n_train, _) in SIZES.items():
        index = json.loads((remote / name / "train" / "index.json").read_text())
        assert sum(s["samples"] for s in index["shards"]) == n_train
    return remote


def test_multi_node_groups_upload_the_merged_artifact(tmp_path, lm1b_lines, capsys):
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lm1b_lines[:60]) + "\n")
    out, bucket = tmp_path / "grouped", tmp_path / "bucket" / "grouped"
    common = ("--input", src, "--mode", "lm1b", "--seq-len", 32, "--valid-fraction", 0.1, "--out", out)
    assert run_main(preprocess_main, *common, "--shard-index", 0, "--num-shards", 2, "--remote", bucket) == 2
    assert "pass --remote to `python -m preprocess merge`" in capsys.readouterr().err
    for i in range(2):
        assert run_main(preprocess_main, *common, "--shard-index", i, "--num-shards", 2) == 0
    assert preprocess_main(["merge", "--out", str(out), "--num-shards", "2", "--remote", str(bucket)]) == 0
    assert f"{bucket}: uploaded" in capsys.readouterr().out
    for rel in ["manifest.json", *json.loads((out / "manifest.json").read_text())["outputs"]]:
        assert (bucket / rel).read_bytes() == (out / rel).read_bytes()
    assert preprocess_main(["merge", "--out", str(out), "--num-shards", "2", "--remote", str(bucket)]) == 0
    assert f"{bucket}: up to date" in capsys.readouterr().out


def _command(run_dir: Path, remote: Path, cache: Path) -> list[str]:
    streams = ", ".join(f"{{name: {n}, remote: {remote / n}, local: {cache / n}, proportion: {PROPORTIONS[n]}}}"
                        for n in SIZES)
    return [DEEPSPEED, "--num_gpus", "2", "--master_port", str(_free_port()), "pipeline/train.py",
            "--ds_config", "ds_configs/zero2.json", "--config", "configs/tiny.yaml", "--run-dir", str(run_dir),
            "lr=3e-3", "warmup_steps=2", "log_every=1", "ema_decay=0.9", f"max_steps={STEPS}", "ckpt_every=4",
            f"val_every={STEPS}", "log_sample_ids=true", f"data.streams=[{streams}]"]


def _why(log: Path) -> str:
    """A failed launch's first traceback (a background thread's, the cause) and the log's end."""
    text = log.read_text()
    first = text.find("Traceback")
    return (text[first:first + 3000] + "\n[...]\n" if first >= 0 else "") + text[-3000:]


def _records(run_dir: Path) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        out.setdefault(record["step"], {}).update(record)  # a redone step keeps its last values
    return out


def _ids(run_dir: Path, rank: int) -> dict[int, list[int]]:
    lines = (run_dir / f"sample_ids_rank{rank}.jsonl").read_text().splitlines()
    return {r["step"]: r["ids"] for r in map(json.loads, lines)}


@pytest.mark.slow  # three DeepSpeed launches
def test_mixture_resumes_exactly_and_draws_each_stream_as_streaming_defines(remote, tmp_path):
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert launch(_command(reference, remote, tmp_path / "cache_ref"), None, tmp_path / "ref_log", 600) == 0, \
        _why(tmp_path / "ref_log.out")

    fault_log = tmp_path / "faults.jsonl"
    code = launch(_command(run, remote, tmp_path / "cache_run"), Fault("step.begin", 7, 0, "job"), fault_log, 600)
    assert code != 0 and fault_log.is_file(), _why(tmp_path / "faults.out")
    assert max(step for step, r in _records(run).items() if "train/loss" in r) == 6
    shutil.rmtree(tmp_path / "cache_run")  # resume on a "fresh node": every shard downloaded again
    assert launch(_command(run, remote, tmp_path / "cache_run"), None, tmp_path / "resume_log", 600) == 0, \
        _why(tmp_path / "resume_log.out")
    assert "resumed from global_step4" in (tmp_path / "resume_log.out").read_text()
    assert (tmp_path / "cache_run" / "web" / "train" / "index.json").is_file()
    assert (tmp_path / "cache_run" / "lm1b" / "manifest.json").is_file()

    ref, got = _records(reference), _records(run)
    for step in range(1, STEPS + 1):
        assert got[step]["train/loss"] == ref[step]["train/loss"], f"step {step}"
    assert got[STEPS]["val/nelbo"] == ref[STEPS]["val/nelbo"]
    for rank in (0, 1):
        assert _ids(run, rank) == _ids(reference, rank)

    table = json.loads((run / "streams.json").read_text())
    assert {**table, "streams": [{**t, "local": None} for t in table["streams"]]} == {
        **(ref_table := json.loads((reference / "streams.json").read_text())),
        "streams": [{**t, "local": None} for t in ref_table["streams"]]}  # the caches differ
    assert table["epoch_size"] == STEPS * GLOBAL == sum(n for n, _ in SIZES.values())
    streams = {s["name"]: s for s in table["streams"]}
    assert [streams[n]["samples"] for n in SIZES] == [n for n, _ in SIZES.values()]
    assert sum(s["choose_per_epoch"] for s in streams.values()) == STEPS * GLOBAL
    drawn = Counter(i for rank in (0, 1) for ids in _ids(run, rank).values() for i in ids)
    assert sum(drawn.values()) == STEPS * GLOBAL
    for name, s in streams.items():
        choose, n, offset = s["choose_per_epoch"], s["samples"], s["sample_offset"]
        assert abs(choose - STEPS * GLOBAL * PROPORTIONS[name]) < 1
        mine = {i - offset: c for i, c in drawn.items() if offset <= i < offset + n}
        assert sum(mine.values()) == choose, name
        counts = [mine.get(j, 0) for j in range(n)]
        assert min(counts) == choose // n and max(counts) == math.ceil(choose / n), (name, Counter(counts))
    assert min(drawn[i] for i in range(64)) >= 2       # the small stream repeats, whole
    assert max(drawn[i] for i in range(64, 192)) == 1  # the large one is subsampled, no repeat
