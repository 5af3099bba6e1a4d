"""Damage met by real runs: a flipped bit in an MDS shard found by training (one line naming the shard, exit 2,
the checkpoints intact), a truncated checkpoint file refused on resume and export (naming the file and
the older tag to fall back to; nothing deleted), and ``python -m pipeline.verify`` on real DeepSpeed
checkpoints. One 4-step training run (1 process, ZeRO-2 on CPU) is shared; each test damages a copy.
The other corruption kinds (manifests, neighbour tables, exports): tests/unit/test_corrupt_inputs.py.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from damage import flip_bit, truncate
from test_train import PYTHON, REPO, TINY, env, run_train, train_command

pytestmark = pytest.mark.slow

ERROR = "pipeline/train.py: error: "


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith(ERROR)]


@pytest.fixture(scope="module")
def data(tmp_path_factory, corpora) -> Path:
    """2,500 LM1B lines through the real preprocess CLI, shards of 64 KiB: three train shards."""
    root = tmp_path_factory.mktemp("corrupt_data")
    src = root / "train.txt"
    src.write_text("\n".join((corpora / "lm1b_sample" / "train.txt").read_text().splitlines()[:2500]) + "\n")
    subprocess.run([PYTHON, "-m", "preprocess", "--input", str(src), "--valid-fraction", "0.1", "--out",
                    str(root / "pre"), "--mode", "lm1b", "--seq-len", "32", "--shard-size-limit", "65536",
                    "--no-progress"], cwd=REPO, env=env(), check=True, capture_output=True)
    assert len(json.loads((root / "pre" / "train" / "index.json").read_text())["shards"]) == 3
    return root / "pre"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data) -> Path:
    """4 steps, checkpoints global_step2 and global_step4 (their markers record every file)."""
    run_dir = tmp_path_factory.mktemp("corrupt_run") / "run"
    proc = run_train(train_command(run_dir, data, [*TINY, "max_steps=4", "ckpt_every=2", "keep_last=3"]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.fixture
def copies(tmp_path, data, trained) -> tuple[Path, Path]:
    """Private copies of the data (with the shards training decompressed) and of the run."""
    return Path(shutil.copytree(data, tmp_path / "pre")), Path(shutil.copytree(trained, tmp_path / "run"))


def tag_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"global_step{step}"


def verify(capsys, *paths) -> tuple[int, str]:
    """``python -m pipeline.verify PATH...`` in this process (one real subprocess run is in the first test)."""
    from pipeline.verify import main

    capsys.readouterr()
    code = main([str(p) for p in paths])
    return code, capsys.readouterr().out


def test_markers_record_every_file_with_size_and_sha256(trained):
    from pipeline.common.artifacts import sha256_file

    for step in (2, 4):
        tag = tag_dir(trained, step)
        files = json.loads((tag / "semdlm_checkpoint.json").read_text())["files"]
        on_disk = sorted(p.name for p in tag.iterdir() if p.name != "semdlm_checkpoint.json")
        assert sorted(files) == on_disk and any(name.startswith("zero_pp_rank_0") for name in files)
        assert all(files[n] == {"size": (tag / n).stat().st_size, "sha256": sha256_file(tag / n)} for n in files)
    proc = subprocess.run([PYTHON, "-m", "pipeline.verify", str(trained)], cwd=REPO, env=env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and f"{trained}: ok (run directory, 2 checkpoints)" in proc.stdout, proc.stderr


def test_a_flipped_bit_in_a_shard_stops_training_with_one_line_and_keeps_the_checkpoints(copies, capsys):
    from pipeline.training.checkpoint import complete_tags, read_checkpoint_for_export

    pre, run_dir = copies
    shard = pre / "train" / "shard.00001.mds.zstd"
    flip_bit(shard)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and "checkpoints" in p.parts}
    proc = run_train(train_command(run_dir, pre, [*TINY, "max_steps=8", "ckpt_every=2", "keep_last=3"]))
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = error_lines(proc)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"{shard} is corrupt: its sha1 differs" in lines[0] and "pipeline.verify" in lines[0]
    assert "resumed from global_step4" in proc.stdout  # found while training, not by a startup check
    assert complete_tags(run_dir) == ["global_step2", "global_step4"]
    assert {p: p.read_bytes() for p in before} == before and not (run_dir / ".lock").exists()
    assert read_checkpoint_for_export(run_dir).training["step"] == 4
    code, out = verify(capsys, pre)
    assert code == 1 and str(shard) in out


def test_a_flipped_bit_found_by_a_dataloader_worker_is_one_clean_line(copies, monkeypatch):
    """configs/*_small.yaml read through 4 DataLoader workers: the worker's error reaches the main process
    rebuilt from its traceback; it must still be one line naming the shard."""
    from pipeline.common.mds_check import ShardCorruptError
    from pipeline.training.data import build_train_loader
    from pipeline.training.streams import parse_data

    pre, _ = copies
    for name in ("RANK", "LOCAL_RANK"):
        monkeypatch.setenv(name, "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    shard = pre / "train" / "shard.00002.mds"  # the decompressed copy training reads after its first run
    flip_bit(shard)
    _, loader = build_train_loader(parse_data({}, str(pre)), 8, shuffle_seed=0, num_canonical_nodes=1, num_workers=1)
    with pytest.raises(ShardCorruptError) as info:
        for _ in loader:
            pass
    message = str(info.value)
    assert message.startswith(f"{shard} is corrupt: its sha1 differs") and "\n" not in message
    assert "Traceback" not in message and "delete it" in message


def test_a_truncated_checkpoint_file_is_refused_naming_it_and_the_fallback(copies, capsys):
    from pipeline.export import main as export_main
    from pipeline.training.checkpoint import complete_tags, read_checkpoint_for_export

    pre, run_dir = copies
    damaged = tag_dir(run_dir, 4) / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    truncate(damaged, damaged.stat().st_size // 3)
    size = damaged.stat().st_size
    proc = run_train(train_command(run_dir, pre, [*TINY, "max_steps=6", "ckpt_every=2", "keep_last=3"]))
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = error_lines(proc)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"checkpoint global_step4 is damaged: {damaged} was truncated or replaced" in lines[0]
    assert "Nothing was deleted" in lines[0] and "older complete checkpoint is global_step2" in lines[0]
    assert f"mv {tag_dir(run_dir, 4)} {tag_dir(run_dir, 4)}.damaged" in lines[0]
    assert damaged.stat().st_size == size and complete_tags(run_dir) == ["global_step2", "global_step4"]

    with pytest.raises(SystemExit) as exit_info:  # the export reads the same tag: the same refusal
        export_main([str(run_dir), "--out", str(run_dir.parent / "export")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and str(damaged) in err[0] and "--tag global_step2" in err[0]
    code, out = verify(capsys, run_dir)
    assert code == 1 and f"{damaged} was truncated or replaced" in out

    tag_dir(run_dir, 4).rename(tag_dir(run_dir, 4).with_name("global_step4.damaged"))  # the advice, followed
    assert read_checkpoint_for_export(run_dir).training["step"] == 2
    assert verify(capsys, run_dir)[0] == 0


def test_an_unreadable_marker_is_named_with_the_fallback(copies):
    from pipeline.training.checkpoint import read_checkpoint_for_export
    from pipeline.training.checkpoint_verify import CheckpointDamagedError

    _, run_dir = copies
    marker = tag_dir(run_dir, 4) / "semdlm_checkpoint.json"
    marker.write_text(marker.read_text()[:100])  # cut mid-JSON
    with pytest.raises(CheckpointDamagedError) as info:
        read_checkpoint_for_export(run_dir)
    assert str(info.value).startswith(f"checkpoint global_step4 is damaged: {marker} is unreadable")
    assert "--tag global_step2" in str(info.value)


def test_verify_finds_a_flipped_bit_in_a_checkpoint_by_hash_and_by_zip_crc(copies, capsys):
    _, run_dir = copies
    model_states = tag_dir(run_dir, 2) / "mp_rank_00_model_states.pt"
    flip_bit(model_states)  # same size: resume's size check cannot see it, verify's hash does
    code, out = verify(capsys, tag_dir(run_dir, 2))
    assert code == 1 and f"{model_states} is corrupt: its sha256 differs" in out
    # A checkpoint saved before files were recorded: the CRCs of torch's zip format still catch it.
    marker = tag_dir(run_dir, 2) / "semdlm_checkpoint.json"
    marker.write_text(json.dumps({k: v for k, v in json.loads(marker.read_text()).items() if k != "files"}))
    code, out = verify(capsys, tag_dir(run_dir, 2))
    assert code == 1 and f"{model_states} is corrupt: member" in out and "fails its CRC-32" in out
