"""A full disk (OSError ENOSPC injected) while a stage writes its artifact: one clear error, the previous
artifact stays complete and valid, no half-written directory is left. The preprocess CLI and a training
checkpoint: tests/integration/test_disk_full_cli.py and tests/integration/test_train.py."""
from __future__ import annotations

import errno
import os

import pytest

from pipeline.common.artifacts import DiskFullError, StageRun, load_manifest, stage_errors, verify_artifact
from pipeline.common.locks import output_lock_path


def enospc(path="x") -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def write_artifact(out, version: int) -> None:
    with StageRun("demo", out, config={"v": version}) as tmp:
        (tmp / "data.txt").write_text(f"version {version}\n" * 100)


def assert_previous_intact(tmp_path, out) -> None:
    manifest = load_manifest(out, stage="demo")
    assert manifest["config"] == {"v": 1} and verify_artifact(out) == []
    assert (out / "data.txt").read_text().startswith("version 1")
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{out.name}.")]
    assert leftovers == [], f"half-written or stale siblings left: {leftovers}"
    assert not output_lock_path(out).exists()


def fail_on(monkeypatch, name: str, predicate):
    """Make os.<name> raise ENOSPC for the calls ``predicate(*args)`` selects."""
    real = getattr(os, name)

    def failing(*args, **kwargs):
        if predicate(*args):
            raise enospc(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, failing)


@pytest.mark.parametrize("where", ["stage_write", "manifest", "swap"])
def test_full_disk_keeps_the_previous_artifact(where, tmp_path, monkeypatch, capsys):
    out = tmp_path / "artifact"
    write_artifact(out, 1)
    if where == "manifest":  # the manifest's temp file is renamed into the temporary directory
        fail_on(monkeypatch, "replace", lambda src, dst, *a: str(dst).endswith("manifest.json"))
    elif where == "swap":  # the finished directory is renamed into place (after the old one moved aside)
        fail_on(monkeypatch, "rename", lambda src, dst, *a: ".tmp-" in str(src))
    with pytest.raises(SystemExit) as exit_info:
        with stage_errors("prog"):
            with StageRun("demo", out, config={"v": 2}, force=True) as tmp:
                (tmp / "data.txt").write_text("version 2\n")
                if where == "stage_write":  # what a stage's own writer raises on a full disk
                    raise enospc(tmp / "more.bin")
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"prog: error: {out}: no space left on device"), lines
    assert "the previous artifact is unchanged" in lines[0]
    monkeypatch.undo()
    assert_previous_intact(tmp_path, out)
    write_artifact(out, 3)  # space is back: the next run writes normally
    assert load_manifest(out)["config"] == {"v": 3}


def test_full_disk_without_a_previous_artifact_leaves_nothing(tmp_path):
    out = tmp_path / "artifact"
    with pytest.raises(DiskFullError, match="there was no previous artifact"):
        with StageRun("demo", out, config={}) as tmp:
            (tmp / "part").write_text("x")
            raise enospc()
    assert list(tmp_path.iterdir()) == []


def test_a_bare_enospc_is_one_line_too(capsys):
    with pytest.raises(SystemExit) as exit_info:
        with stage_errors("prog"):
            raise enospc("/runs/x/metrics.jsonl")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("prog: error: no space left on device: ") and "metrics.jsonl" in err[0]


def test_full_disk_during_an_export_keeps_the_previous_export(tmp_path, monkeypatch, capsys):
    import pipeline.common.export_artifact as export_artifact
    from pipeline.core.model import AutoregressiveLM, ModelConfig

    cfg = ModelConfig.preset("tiny", vocab_size=16, causal=True, max_seq_len=8)
    model = AutoregressiveLM(cfg)
    out = tmp_path / "export"
    export_artifact.save_export(out, model, cfg, None, {"name_or_path": "x"}, {}, "ar")
    before = load_manifest(out, stage="export")

    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"\0" * 100)  # part of the file made it to disk
        raise enospc(filename)

    monkeypatch.setattr(export_artifact, "save_file", full_disk)
    with pytest.raises(SystemExit) as exit_info:
        with stage_errors("python -m pipeline.export"):
            export_artifact.save_export(out, model, cfg, None, {"name_or_path": "x"}, {}, "ar", force=True)
    assert exit_info.value.code == 2
    assert "no space left on device" in capsys.readouterr().err
    assert load_manifest(out, stage="export") == before and verify_artifact(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
