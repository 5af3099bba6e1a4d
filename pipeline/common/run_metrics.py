"""Reading a run's ``metrics.jsonl`` (written by pipeline/training/metrics.py): the one reader of it.

The file is appended to by rank 0, one JSON record per line, and survives kills and resumes, so a reader
meets two things a clean run never writes:

* a last line cut by a kill (not JSON): skipped, the records before it are the run's history;
* records of steps that were done twice: a run resumed from its last checkpoint redoes the steps after it,
  appending them again. When a record's step is below one already seen, the run was resumed there: the
  earlier records of that step and later are dropped (the redone ones replace them). Records of the same
  step logged again without a lower step first (killed between logging a step and checkpointing it) are
  resolved by :func:`series`, whose last value per step wins.
"""
from __future__ import annotations

import json
from pathlib import Path


def read_metrics(path: str | Path) -> list[dict]:
    """The run's records in step order, resumes resolved; [] when the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    rows: list[dict] = []
    last_step = None
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # cut by a kill
            continue
        if not isinstance(row, dict) or "step" not in row:
            continue
        if last_step is not None and row["step"] < last_step:  # resumed from an earlier checkpoint
            rows = [r for r in rows if r["step"] < row["step"]]
        rows.append(row)
        last_step = row["step"]
    return rows


def series(rows: list[dict], key: str) -> list[tuple[int, float]]:
    """(step, value) of ``key`` in step order, one value per step (the last logged)."""
    by_step = {r["step"]: r[key] for r in rows if key in r}
    return sorted(by_step.items())
