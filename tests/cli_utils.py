"""Running a stage's CLI in-process the way the shell does, and reading a training run's losses (test helpers)."""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path


def run_main(main: Callable[[Sequence[str]], int], *args, progress: bool = False) -> int:
    """``main([str(a) for a in args])`` (plus ``--no-progress`` unless ``progress``) as its exit status:
    an argparse or stage-error ``SystemExit`` becomes its code, as the shell would see it."""
    argv = [str(a) for a in args] + ([] if progress else ["--no-progress"])
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def step_losses(run_dir: Path) -> dict[int, float]:
    """train/loss per step from metrics.jsonl; a step logged twice (redone after a kill) keeps the last."""
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "train/loss" in record:
            out[record["step"]] = record["train/loss"]
    return out
