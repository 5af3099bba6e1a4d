"""Compare the logged losses of two training runs step by step (a refactor must leave them unchanged).

    python scripts/compare_losses.py RUN_A RUN_B [--keys train/loss,val/nelbo]

Prints the largest absolute difference per key over the steps both runs logged; exit 1 when any differs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _series(run: Path, key: str) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r[key] for r in rows if key in r}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--keys", default="train/loss,train/grad_norm,val/nelbo")
    args = p.parse_args(argv)
    differs = False
    for key in args.keys.split(","):
        a, b = _series(Path(args.run_a), key), _series(Path(args.run_b), key)
        steps = sorted(set(a) & set(b))
        worst = max((abs(a[s] - b[s]) for s in steps), default=float("nan"))
        differs |= bool(steps) and worst > 0
        print(f"{key}: {len(steps)} common steps, max |diff| = {worst:.3g}")
    return 1 if differs else 0


if __name__ == "__main__":
    sys.exit(main())
