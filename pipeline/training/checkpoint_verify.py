"""Integrity of a checkpoint tag's files: recorded at save, checked on resume / export and by verify.

* **Save** (:func:`record_files`): rank 0, after the barrier that follows every rank's writes, records size
  and sha256 of every file of the tag (all ranks' files; the checkpoint directory is shared) in the
  completion marker, under ``"files"``. The hash is not free: it reads the whole tag once more, on
  parallel threads; on a 2-core CPU machine a 1.95 GiB tag took 2.9-3.2 s against 10.1 s for its
  torch.save, about 30% on top of a save (docs/training.md). It is kept because only a hash catches a
  flipped bit or a file replaced by another of the same size (what ``verify`` looks for); resume checks
  only the sizes, which catch truncation.
* **Resume / export** (:func:`check_sizes`, through ``checkpoint.check_files``): every recorded file must
  exist with its recorded size, a stat per file. A damaged tag raises :class:`CheckpointDamagedError`
  naming the file and the newest older complete tag to fall back to; nothing is deleted.
* **verify** (:func:`tag_problems`, ``python -m pipeline.verify RUN_DIR``): sizes and sha256, the zip
  CRC of every ``.pt`` member, and ``torch.load(weights_only=True)`` of every ``.pt``.

Tags saved before sizes were recorded (no ``"files"`` in the marker) are accepted as they are.
This module knows nothing of the run directory's layout (``checkpoint.py`` does, and calls it).
"""
from __future__ import annotations

import json
import os
import pickle
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from pipeline.common.artifacts import StageError, sha256_file


class CheckpointDamagedError(StageError):
    """A checkpoint's file is missing, truncated or replaced; the message names it and the fallback tag."""


def record_files(tag_dir: Path, skip: str) -> dict:
    """{relative path: {"size", "sha256"}} of every file under ``tag_dir`` except ``skip`` (the marker)."""
    tag_dir = Path(tag_dir)
    paths = sorted(p for p in tag_dir.rglob("*") if p.is_file() and not p.name.startswith(skip))
    workers = max(1, min(8, os.cpu_count() or 1, len(paths)))
    with ThreadPoolExecutor(workers) as pool:  # hashlib releases the GIL: the files hash in parallel
        digests = list(pool.map(sha256_file, paths))
    return {p.relative_to(tag_dir).as_posix(): {"size": p.stat().st_size, "sha256": digest}
            for p, digest in zip(paths, digests)}


def size_problems(tag_dir: Path, files: dict) -> list[tuple[Path, str]]:
    """(file, problem) of recorded files that are missing or of another size (one stat per file)."""
    problems = []
    for rel, meta in sorted(files.items()):
        path = Path(tag_dir) / rel
        if not path.is_file():
            problems.append((path, f"{path} is missing (the checkpoint's marker lists it)"))
        elif path.stat().st_size != meta["size"]:
            problems.append((path, f"{path} was truncated or replaced: it has {path.stat().st_size} bytes, "
                                   f"{meta['size']} were saved"))
    return problems


def read_marker_file(path: Path) -> dict:
    try:
        marker = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointDamagedError(f"{path} is unreadable ({exc})") from exc
    if not isinstance(marker, dict):
        raise CheckpointDamagedError(f"{path} is not a checkpoint marker (a JSON object)")
    return marker


def check_sizes(root: Path, tag: str, marker_name: str, complete: list[str]) -> None:
    """Raise CheckpointDamagedError unless tag's recorded files are all there with their sizes.

    ``complete``: the run's complete tags, oldest first; the message names the newest older one whose
    files pass the same check, and how to resume from it (or export it).
    """
    tag_dir = Path(root) / tag
    try:
        problems = [line for _, line in size_problems(tag_dir, read_marker_file(tag_dir / marker_name).get("files")
                                                       or {})]
    except CheckpointDamagedError as exc:
        problems = [str(exc)]
    if not problems:
        return
    older = [t for t in complete if t != tag and _step(t) < _step(tag)]
    fallback = next((t for t in reversed(older) if _sizes_ok(Path(root) / t, marker_name)), None)
    if fallback is not None:
        advice = (f"the newest older complete checkpoint is {fallback}: to resume from it, move the damaged one "
                  f"aside (mv {tag_dir} {tag_dir}.damaged) and rerun; to export it, pass --tag {fallback}")
    elif older:
        advice = f"the older checkpoints ({', '.join(older)}) are damaged too; restore the run from a copy"
    else:
        advice = "no older complete checkpoint exists; restore it from a copy, or move it aside to start over"
    raise CheckpointDamagedError(f"checkpoint {tag} is damaged: {problems[0]}"
                                 f"{f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''}. "
                                 f"Nothing was deleted; {advice}.")


def _step(tag: str) -> int:
    digits = "".join(c for c in tag if c.isdigit())
    return int(digits) if digits else -1


def _sizes_ok(tag_dir: Path, marker_name: str) -> bool:
    try:
        return not size_problems(tag_dir, read_marker_file(tag_dir / marker_name).get("files") or {})
    except CheckpointDamagedError:
        return False


def tag_problems(tag_dir: Path, marker_name: str) -> list[str]:
    """Everything verify checks in one tag: the marker, recorded sizes and sha256, every .pt's zip CRCs and
    torch.load(weights_only=True). One line per problem, each naming its file."""
    tag_dir = Path(tag_dir)
    try:
        files = read_marker_file(tag_dir / marker_name).get("files") or {}
    except CheckpointDamagedError as exc:
        return [str(exc)]
    found = size_problems(tag_dir, files)
    bad = {path for path, _ in found}
    for rel, meta in sorted(files.items()):
        path = tag_dir / rel
        if path not in bad and sha256_file(path) != meta["sha256"]:
            found.append((path, f"{path} is corrupt: its sha256 differs from the one saved in {marker_name}"))
            bad.add(path)
    for path in sorted(tag_dir.rglob("*.pt")):
        if path not in bad and (problem := torch_file_problem(path)):
            found.append((path, problem))
    return [line for _, line in found]


def _deepspeed_globals() -> list:
    """Classes DeepSpeed pickles into its optimizer states (torch.load(weights_only=True) refuses others)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def torch_file_problem(path: Path) -> str | None:
    """A .pt file (torch's zip format) whose members fail their CRC-32 or that does not load with
    weights_only=True; a class outside the allow-list is no damage (the CRCs vouch for the bytes)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad_member = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return f"{path} is not a readable torch file ({exc})"
    if bad_member is not None:
        return f"{path} is corrupt: member {bad_member} fails its CRC-32"
    try:
        with torch.serialization.safe_globals(_deepspeed_globals()):
            torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):
            return f"{path} does not load with torch.load(weights_only=True): {str(exc).splitlines()[0]}"
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        return f"{path} does not load with torch.load(weights_only=True): {str(exc).splitlines()[0]}"
    return None

