"""pipeline/common/run_metrics.py: a metrics.jsonl after a kill and a resume reads as one clean history."""
import json

from pipeline.common.run_metrics import read_metrics, series


def _lines(records):
    return "".join(json.dumps(r) + "\n" for r in records)


def test_cut_line_resume_and_relogged_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    first = [{"step": s, "train/loss": 10.0 - s} for s in (1, 2, 3, 4)] + [{"step": 4, "val/nelbo": 9.0}]
    # killed at step 4 while writing, resumed from the checkpoint at step 2: steps 3-4 redone, then a
    # kill between logging step 5 and its checkpoint, and step 5 logged again
    second = [{"step": s, "train/loss": 20.0 - s} for s in (3, 4, 5)] + [{"step": 5, "train/loss": 14.5}]
    path.write_text(_lines(first) + '{"step": 4, "trai\n' + _lines(second))
    rows = read_metrics(path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 5]
    assert series(rows, "train/loss") == [(1, 9.0), (2, 8.0), (3, 17.0), (4, 16.0), (5, 14.5)]
    assert series(rows, "val/nelbo") == []  # logged at step 4 before the resume: that step was redone
    assert read_metrics(tmp_path / "missing.jsonl") == []
