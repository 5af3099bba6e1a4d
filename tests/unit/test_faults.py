"""Fault specs (pipeline.common.faults) and checkpoint pruning's order (marker first), without DeepSpeed."""
from __future__ import annotations

import json

import pytest

from pipeline.common import faults
from pipeline.training.checkpoint import MARKER, checkpoint_dir, complete_tags, prune


def test_fault_spec_round_trips_and_rejects_unknown_points():
    fault = faults.Fault("save.torn_file", step=6, rank=1, scope="rank", nth=2)
    assert faults.parse(fault.to_env()) == fault
    assert faults.parse("point=step.begin,step=3,rank=0") == faults.Fault("step.begin", 3, 0, "job", 1)
    with pytest.raises(ValueError, match="point must be one of"):
        faults.parse("point=save.somewhere,step=3,rank=0")
    with pytest.raises(ValueError, match="scope"):
        faults.parse("point=step.begin,step=3,rank=0,scope=node")


def test_no_fault_armed_without_the_environment_variable(monkeypatch):
    monkeypatch.setattr(faults, "_FAULT", None)
    assert not faults.armed("step.begin", 1, 0)
    faults.point("step.begin", 1, 0)  # a no-op: this test process survives


def _tag(run_dir, step, complete=True):
    path = checkpoint_dir(run_dir) / f"global_step{step}"
    path.mkdir(parents=True)
    (path / "mp_rank_00_model_states.pt").write_bytes(b"x" * 10)
    if complete:
        (path / MARKER).write_text(json.dumps({"step": step}))
    return path


def test_prune_keeps_the_newest_complete_tags_and_clears_older_leftovers(tmp_path):
    for step in (2, 4, 6):
        _tag(tmp_path, step)
    _tag(tmp_path, 3, complete=False)   # a killed save, older than the save now pruning
    _tag(tmp_path, 8, complete=False)   # ahead of it: left for the save of step 8 to replace
    prune(tmp_path, keep_last=2, step=6)
    left = sorted(p.name for p in checkpoint_dir(tmp_path).iterdir())
    assert left == ["global_step4", "global_step6", "global_step8"]
    assert complete_tags(tmp_path) == ["global_step4", "global_step6"]
