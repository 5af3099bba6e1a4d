"""Mark a study cell done from inside its SLURM job (slurm/cell.sh and slurm/train.sh run it after the stage).

    python -m pipeline.studies.stamp DIR CELL [--seconds S]

The key and the command stamped are the ones ``--slurm`` recorded when it submitted the cell
(DIR/.study/submitted/<cell>.json): the stamp names what ran, even if the spec changed since.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.common.artifacts import StageError, stage_errors

from .runner import write_stamp

PROG = "python -m pipeline.studies.stamp"


def submitted_file(out: Path, name: str) -> Path:
    """What --slurm submitted for cell ``name``: {"key", "argv", "command"}."""
    return Path(out) / ".study" / "submitted" / (name.replace("/", "__") + ".json")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="the study directory (--out of pipeline.study)")
    p.add_argument("cell", help="the cell's name, e.g. train/mask-elbo-s0")
    p.add_argument("--seconds", type=float, default=0.0, help="how long the stage ran")
    args = p.parse_args(argv)
    with stage_errors(PROG):
        record = submitted_file(Path(args.out), args.cell)
        try:
            submitted = json.loads(record.read_text())
        except (OSError, ValueError) as exc:
            raise StageError(f"no submission record for cell {args.cell} ({record}: {exc}); "
                             "submit the study again with --slurm") from None
        write_stamp(Path(args.out), args.cell, submitted["key"], submitted["argv"], args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
