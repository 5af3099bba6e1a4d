"""A full disk (OSError ENOSPC injected) during a real stage run: the preprocess CLI stops with one clear
line, the previous artifact stays complete and valid, no half-written directory is left. StageRun's
failure points one by one: tests/unit/test_disk_full.py; a training checkpoint: tests/integration/test_train.py."""
from __future__ import annotations

import errno
import os

import numpy as np

from pipeline.common.artifacts import load_manifest, verify_artifact
from preprocess.__main__ import main

from cli_utils import run_main


def test_preprocess_on_a_full_disk_keeps_the_previous_artifact(tmp_path, lm1b_lines, monkeypatch, capsys):
    src = tmp_path / "train.txt"
    src.write_text("\n".join(lm1b_lines[:60]) + "\n")
    out = tmp_path / "pre"
    args = ["--input", src, "--out", out, "--mode", "lm1b", "--seq-len", 32]
    assert run_main(main, *args) == 0
    before = load_manifest(out, stage="preprocess")
    capsys.readouterr()

    real_save = np.save

    def full_disk(file, arr, *a, **k):  # the unigram counts, written after every shard
        if str(file).endswith("unigram_counts.npy"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return real_save(file, arr, *a, **k)

    monkeypatch.setattr(np, "save", full_disk)
    assert run_main(main, *args, "--force", "--seq-len", 48) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"python -m preprocess: error: {out}: no space left on device writing ")
    assert "unigram_counts.npy" in lines[0] and "the previous artifact is unchanged" in lines[0]
    monkeypatch.undo()
    assert load_manifest(out, stage="preprocess") == before and verify_artifact(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pre", "train.txt"]  # no .pre.tmp-*, no lock
