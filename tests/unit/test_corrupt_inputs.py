"""Damaged inputs found early and named: a hand-edited manifest, a truncated or bit-flipped MDS shard, a
truncated or unreadable neighbour table, an export whose weights do not match its config. Each gives one
clear error naming the file (and ``python -m pipeline.verify`` exit 1 naming it); real artifacts written
by the real stage code, read by the real readers (streaming, numpy, safetensors). Checkpoints and a
flipped shard met mid-training: tests/integration/test_corrupt_inputs_cli.py."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from damage import flip_bit, truncate

from pipeline.common.artifacts import ArtifactError, StageRun, load_manifest, stage_errors

from neighbor_tables import shifted_tables, write_neighbor_artifact


def one_line_error(capsys, prog: str, action) -> str:
    """Run ``action`` under the CLIs' stage_errors: exit 2 and exactly one ``PROG: error:`` line."""
    with pytest.raises(SystemExit) as exit_info:
        with stage_errors(prog):
            action()
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), lines
    return lines[0]


def verify(capsys, *paths) -> tuple[int, str]:
    from pipeline.verify import main

    try:
        code = main([str(p) for p in paths])
    except SystemExit as exc:  # argparse / usage errors
        code = exc.code
    out = capsys.readouterr()
    return code, out.out + out.err


# --------------------------------------------------------------------------- a real preprocess artifact
@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory, lm1b_lines) -> Path:
    """1,300 LM1B lines, 32 tokens, 10% validation, shards of 64 KiB: two train shards, one validation."""
    from preprocess.build import run_preprocess
    from preprocess.config import PreprocessConfig

    root = tmp_path_factory.mktemp("corrupt_pre")
    src = root / "train.txt"
    src.write_text("\n".join(lm1b_lines[:1300]) + "\n")
    cfg = PreprocessConfig(mode="lm1b", seq_len=32, valid_fraction=0.1, shard_size_limit=1 << 16, progress=False,
                           inputs={"train": [str(src)]})
    out = run_preprocess(cfg, root / "pre", log=lambda *a: None)
    assert len(json.loads((out / "train" / "index.json").read_text())["shards"]) == 2
    return out


@pytest.fixture
def artifact(preprocessed, tmp_path) -> Path:
    """A private copy to damage (only the compressed shards: nothing decompressed yet)."""
    return Path(shutil.copytree(preprocessed, tmp_path / "pre", ignore=shutil.ignore_patterns("*.mds")))


@pytest.fixture
def streaming_env(monkeypatch):
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"), ("LOCAL_WORLD_SIZE", "1")):
        monkeypatch.setenv(name, value)


def drain_train_split(split: Path, num_workers: int = 0) -> int:
    """Micro-batches of 8 through the training loader until the epoch ends (or it raises)."""
    from pipeline.training.data import build_train_loader
    from pipeline.training.streams import parse_data

    data = parse_data({}, str(Path(split).parent))  # --preprocessed ARTIFACT: one local stream
    _, loader = build_train_loader(data, 8, shuffle_seed=0, num_canonical_nodes=1, num_workers=num_workers)
    return sum(1 for _ in loader)


def test_a_hand_edited_manifest_is_refused_naming_it(artifact, capsys):
    from pipeline.core.kernels import KernelConfig
    from pipeline.training.components import load_upstream

    path = artifact / "manifest.json"
    original = json.loads(path.read_text())
    assert original["manifest_sha256"]
    edited = {**original, "seq_len": 64}
    path.write_text(json.dumps(edited, indent=2, sort_keys=True) + "\n")
    with pytest.raises(ArtifactError, match="edited after it was written"):
        load_manifest(artifact, stage="preprocess")
    line = one_line_error(capsys, "pipeline/train.py",
                          lambda: load_upstream(artifact, None, KernelConfig.preset("mask")))
    assert str(path) in line and "--force" in line
    code, out = verify(capsys, artifact)
    assert code == 1 and f"{path} was edited after it was written" in out
    # a manifest written before the self-checksum existed is accepted as it is
    path.write_text(json.dumps({k: v for k, v in original.items() if k != "manifest_sha256"}, indent=2))
    assert load_manifest(artifact, stage="preprocess")["seq_len"] == 32


def test_the_self_checksum_keeps_freshness_and_a_hand_edit_forces_a_rebuild(tmp_path):
    out = tmp_path / "demo"

    def run() -> StageRun:
        return StageRun("demo", out, config={"v": 1, "path": tmp_path}, tokenizer={"identity": "t"})

    with run() as tmp:
        (tmp / "a.txt").write_text("a")
    assert run().is_up_to_date()  # the checksummed manifest reads back equal (Paths written as strings)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "outputs": {}}, indent=2))
    assert not run().is_up_to_date()  # an edited manifest is no longer trusted: the stage rebuilds


def test_a_truncated_shard_is_named_before_training_starts(artifact, capsys):
    from pipeline.core.kernels import KernelConfig
    from pipeline.training.components import load_upstream

    shard = artifact / "train" / "shard.00001.mds.zstd"
    truncate(shard, shard.stat().st_size // 2)
    line = one_line_error(capsys, "pipeline/train.py",
                          lambda: load_upstream(artifact, None, KernelConfig.preset("mask")))
    assert f"{shard} was truncated or replaced" in line
    code, out = verify(capsys, artifact)
    assert code == 1 and f"{shard} was truncated or replaced" in out


@pytest.mark.parametrize("damaged", ["compressed", "decompressed"])
def test_a_flipped_bit_in_a_shard_stops_the_training_reader_naming_it(damaged, artifact, streaming_env, capsys):
    """(DataLoader workers, a subprocess each: tests/integration/test_corrupt_inputs_cli.py.)"""
    from pipeline.common.mds_check import ShardCorruptError
    from pipeline.core.kernels import KernelConfig
    from pipeline.training.components import load_upstream

    train = artifact / "train"
    if damaged == "decompressed":
        assert drain_train_split(train) > 0  # a clean epoch decompresses every shard next to its .zstd
        shard = train / "shard.00001.mds"
    else:
        shard = train / "shard.00001.mds.zstd"
    flip_bit(shard)
    load_upstream(artifact, None, KernelConfig.preset("mask"))  # the size check cannot see a flipped bit
    line = one_line_error(capsys, "pipeline/train.py", lambda: drain_train_split(train))
    assert f"{shard} is corrupt: its sha1 differs" in line and "Traceback" not in line
    with pytest.raises(ShardCorruptError):
        drain_train_split(train)  # a second reader of the same split: refused the same way
    code, out = verify(capsys, artifact)
    assert code == 1 and str(shard) in out


def test_validation_and_evaluation_readers_check_shards_too(artifact, streaming_env):
    from pipeline.common.mds_check import ShardCorruptError
    from pipeline.evaluation.nelbo import read_test_sequences
    from pipeline.training.data import ValidationSet
    from pipeline.training.streams import parse_data

    shard = artifact / "validation" / "shard.00000.mds.zstd"
    flip_bit(shard)
    with pytest.raises(ShardCorruptError, match=str(shard)):
        next(ValidationSet(parse_data({}, str(artifact)), 0, 1, micro_batch=4, num_batches=1).batches())
    with pytest.raises(ShardCorruptError, match=str(shard)):
        read_test_sequences(artifact / "validation")


def test_clean_artifacts_verify_and_the_stage_clis_delegate(preprocessed, tmp_path, capsys):
    from neighbor_index.__main__ import main as neighbor_main
    from preprocess.__main__ import main as preprocess_main

    code, out = verify(capsys, preprocessed)
    assert code == 0 and f"{preprocessed}: ok (preprocess artifact)" in out
    assert preprocess_main(["verify", str(preprocessed)]) == 0
    with pytest.raises(SystemExit) as exit_info:  # another stage's artifact
        neighbor_main(["verify", str(preprocessed)])
    assert exit_info.value.code == 2 and "holds a 'preprocess' artifact" in capsys.readouterr().err
    (tmp_path / "plain").mkdir()
    for bad in (tmp_path / "missing", tmp_path / "plain"):
        code, out = verify(capsys, bad)
        assert code == 2 and out.startswith("python -m pipeline.verify: error: ") and str(bad) in out


def test_group_and_merged_artifacts_verify_and_a_shared_shard_is_named_in_both(tmp_path, lm1b_lines, capsys):
    """A merged artifact hard-links its groups' shards under a ``gIIIII.`` prefix: verify follows index.json."""
    from preprocess.build import group_dir, run_preprocess
    from preprocess.config import PreprocessConfig
    from preprocess.merge import merge_groups

    src = tmp_path / "train.txt"
    src.write_text("\n".join(lm1b_lines[:200]) + "\n")
    out = tmp_path / "pre"
    for index in (0, 1):
        run_preprocess(PreprocessConfig(mode="lm1b", seq_len=32, valid_fraction=0.1, progress=False,
                                        shard_index=index, num_shards=2, inputs={"train": [str(src)]}), out,
                       log=lambda *a: None)
    merge_groups(out, 2, log=lambda *a: None)
    group = group_dir(out, 1, 2)
    code, text = verify(capsys, out, group)
    assert code == 0 and f"{out}: ok (preprocess artifact)" in text and f"{group}: ok (preprocess-group" in text
    flip_bit(group / "train" / "shard.00000.mds.zstd")  # the same inode as the merged g00001.shard.00000
    code, text = verify(capsys, out, group)
    assert code == 1
    assert f"{out / 'train' / 'g00001.shard.00000.mds.zstd'} is corrupt" in text
    assert f"{group / 'train' / 'shard.00000.mds.zstd'} is corrupt" in text


# --------------------------------------------------------------------------- neighbour tables
def small_tables() -> dict:
    valid = np.ones(40, dtype=bool)
    valid[:3] = False
    return shifted_tables(valid, k=6)


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_damaged_neighbour_table_is_named(damage, tmp_path, capsys):
    from neighbor_index.__main__ import main as neighbor_main
    from pipeline.common.neighbor_artifact import load_neighbor_tables

    out = write_neighbor_artifact(tmp_path / "nn", small_tables(), config={"k_max": 6})
    assert neighbor_main(["verify", str(out)]) == 0
    table = out / "similarities.npy"
    if damage == "truncated":
        truncate(table, table.stat().st_size - 16)
        expected = f"{table} was truncated or replaced"
    else:
        flip_bit(table, table.stat().st_size - 3)  # in the data, not the header: np.load alone would not notice
        expected = f"{table} is corrupt: its sha256 differs"
    line = one_line_error(capsys, "python -m pipeline.sample", lambda: load_neighbor_tables(out))
    assert expected in line
    assert neighbor_main(["verify", str(out)]) == 1
    assert str(table) in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["truncated", "pickled"])
def test_an_unreadable_table_that_got_past_the_manifest_is_named(bad, tmp_path, capsys):
    """Damage done before the manifest was written (so sizes and hashes agree): np.load's own error, named."""
    from pipeline.common.neighbor_artifact import load_neighbor_tables, write_neighbor_arrays

    from neighbor_tables import neighbor_arrays

    out = tmp_path / "nn"
    with StageRun("neighbor_index", out, config={"k_max": 6}) as tmp:
        write_neighbor_arrays(tmp, neighbor_arrays(small_tables()))
        table = tmp / "unigram_prior.npy"
        if bad == "truncated":
            truncate(table, table.stat().st_size - 8)
        else:
            np.save(table, np.array([{"not": "a table"}], dtype=object), allow_pickle=True)
    line = one_line_error(capsys, "python -m pipeline.sample", lambda: load_neighbor_tables(out))
    assert f"{out / 'unigram_prior.npy'} is not a readable .npy table" in line
    code, out_text = verify(capsys, out)
    assert code == 1 and f"{out / 'unigram_prior.npy'} is not a readable .npy table" in out_text


def test_a_table_of_the_wrong_shape_is_named_by_verify(tmp_path, capsys):
    out = write_neighbor_artifact(tmp_path / "nn", small_tables(), config={"k_max": 8})  # holds 6 per row
    code, out_text = verify(capsys, out)
    assert code == 1 and f"{out / 'neighbors.npy'} has shape [40, 6], its manifest implies [?x8]" in out_text


# --------------------------------------------------------------------------- exports
@pytest.mark.parametrize("other,first", [({"n_layer": 3}, "unexpected backbone.blocks.2."),
                                         ({"d_model": 32}, "of another shape")])
def test_an_export_whose_weights_do_not_match_its_config_is_named(other, first, tmp_path, capsys):
    import torch

    from pipeline.common.export_artifact import load_export, save_export
    from pipeline.core.model import ModelConfig, build_model

    cfg = ModelConfig.preset("tiny", vocab_size=16, causal=True, max_seq_len=8)
    torch.manual_seed(0)
    good = save_export(tmp_path / "good", build_model(cfg), cfg, None, {"name_or_path": "x"}, {}, "ar")
    assert load_export(good).kind == "ar" and verify(capsys, good)[0] == 0
    wrong = build_model(ModelConfig.preset("tiny", vocab_size=16, causal=True, max_seq_len=8, **other))
    out = save_export(tmp_path / "bad", build_model(cfg), cfg, None, {"name_or_path": "x"}, {}, "ar",
                      state_dict=wrong.state_dict())  # the production writer, given another model's weights
    line = one_line_error(capsys, "python -m pipeline.evaluate", lambda: load_export(out))
    weights = out / "model.safetensors"
    assert f"{weights} does not match {out / 'config.json'}" in line and first in line
    code, out_text = verify(capsys, out)
    assert code == 1 and f"{weights} does not match" in out_text
