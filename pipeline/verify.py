"""Check any artifact of the pipeline for damage: one line per problem, each naming its file.

    python -m pipeline.verify PATH [PATH ...]

PATH is one of

* a stage artifact (a directory holding manifest.json: preprocess, neighbor_index, export, evaluate, ...):
  the manifest's self-checksum, every output re-hashed, and the checks of its kind
  (pipeline/common/verify.py: MDS shards against index.json's sha1, neighbour tables' shapes, an export's
  weights against its config);
* a training run directory (holds checkpoints/): every complete checkpoint tag, as below;
* one checkpoint tag (RUN_DIR/checkpoints/global_stepN): the sizes and sha256 its marker recorded at save,
  the zip CRC of every .pt and torch.load(weights_only=True) (pipeline/training/checkpoint_verify.py).

Exit status 0 when everything is clean, 1 when problems were found, 2 when a PATH is none of these.
Nothing is modified. ``python -m preprocess verify DIR`` and ``python -m neighbor_index verify DIR`` check
their own stage's artifacts the same way.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.common.artifacts import StageError
from pipeline.common.verify import artifact_check, report

PROG = "python -m pipeline.verify"


def _tag_dirs(run_dir: Path) -> tuple[list[Path], list[Path]]:
    """(complete tags, tags without a marker) of a run directory, oldest first."""
    from pipeline.training.checkpoint import MARKER, TAG_RE, checkpoint_dir

    tags = sorted((int(m.group(1)), p) for p in checkpoint_dir(run_dir).iterdir() if (m := TAG_RE.match(p.name)))
    return [p for _, p in tags if (p / MARKER).is_file()], [p for _, p in tags if not (p / MARKER).is_file()]


def _run_problems(run_dir: Path) -> list[str]:
    from pipeline.training.checkpoint import MARKER
    from pipeline.training.checkpoint_verify import tag_problems

    complete, partial = _tag_dirs(run_dir)
    for tag_dir in partial:  # a save that was killed: resume and export skip it, so it is no damage
        print(f"{tag_dir}: no {MARKER} (an interrupted save; resume and export ignore it)", file=sys.stderr)
    return [line for tag_dir in complete for line in tag_problems(tag_dir, MARKER)]


def check(path: Path):
    from pipeline.training.checkpoint import MARKER, TAG_RE, checkpoint_dir

    if (path / "manifest.json").is_file() or not path.is_dir():
        return artifact_check()(path)
    if checkpoint_dir(path).is_dir():
        complete, _ = _tag_dirs(path)
        if not complete:
            raise StageError(f"{path} holds no complete checkpoint (no {MARKER} under {checkpoint_dir(path)})")
        what = f"run directory, {len(complete)} checkpoint{'s' if len(complete) > 1 else ''}"
        return what, lambda: _run_problems(path)
    if TAG_RE.match(path.name) and (path / MARKER).is_file():
        from pipeline.training.checkpoint_verify import tag_problems

        return "checkpoint", lambda: tag_problems(path, MARKER)
    if TAG_RE.match(path.name):
        raise StageError(f"{path} is not a complete checkpoint (no {MARKER}: an interrupted save)")
    raise StageError(f"{path} is neither an artifact (no manifest.json), a run directory (no checkpoints/) "
                     "nor a checkpoint tag (global_stepN)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=PROG, description="Check artifacts, run directories and checkpoints for "
                                "damage (exit 0 clean, 1 problems found, 2 usage error).")
    p.add_argument("paths", nargs="+", metavar="PATH", help="artifact, run directory or checkpoint tag directory")
    args = p.parse_args(argv)
    return report(PROG, args.paths, check)


if __name__ == "__main__":
    sys.exit(main())
