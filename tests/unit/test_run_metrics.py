"""pipeline/common/run_metrics.py: a metrics.jsonl after a kill and a resume reads as one clean history."""
import json

from pipeline.common.run_metrics import read_metrics, series


def _write(path, records, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)


def test_cut_line_resume_and_relogged_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    first = [{"step": s, "train/loss": 10.0 - s} for s in (1, 2, 3, 4)] + [{"step": 4, "val/nelbo": 9.0}]
    # killed at step 4 while writing, resumed from the checkpoint at step 2: steps 3-4 redone, then a
    # kill between logging step 5 and its checkpoint, and step 5 logged again
    second = [{"step": s, "train/loss": 20.0 - s} for s in (3, 4, 5, 5)]
    _write(path, first, tail='{"step": 4, "trai')
    path.write_text(path.read_text() + "\n" + "".join(json.dumps(r) + "\n" for r in second))
    rows = read_metrics(path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 5]
    assert series(rows, "train/loss") == [(1, 9.0), (2, 8.0), (3, 17.0), (4, 16.0), (5, 15.0)]
    assert series(rows, "val/nelbo") == []  # logged at step 4 before the resume: that step was redone
    assert read_metrics(tmp_path / "missing.jsonl") == []
