"""Deep check of a stage artifact, and the report every ``verify`` command prints.

:func:`artifact_problems` re-hashes every output against the manifest (whose own ``manifest_sha256`` is
checked first), then runs what the artifact's kind allows beyond that:

* ``preprocess`` / ``preprocess-group``: each split's index.json against the manifest (sample count,
  column) and every shard file present, compressed or decompressed, against index.json's sha1;
* ``neighbor_index``: every table loads with ``allow_pickle=False``, with the shape the manifest implies
  (vocabulary size, ``k_max``, ``assoc_k``), and the tables are consistent (validate_neighbor_arrays);
* ``export``: model.safetensors' tensor names and shapes against the model config.json describes; the
  neighbour tables it carries against the sha256s config.json records, and their consistency;
* any other stage (evaluate, sample, ...): the re-hash.

A file found damaged by the re-hash is not reported again by the deeper checks. Checkpoints (run
directories) are checked by ``pipeline.training.checkpoint_verify``; ``python -m pipeline.verify``
handles both, ``python -m preprocess verify`` and ``python -m neighbor_index verify`` their own stage.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from .artifacts import ArtifactError, StageError, load_manifest, sha256_file, stage_errors

Problem = tuple[Path, str]  # (the damaged file, one line naming it)


def output_problems(directory: Path, manifest: dict) -> list[Problem]:
    problems = []
    for rel, meta in sorted(manifest.get("outputs", {}).items()):
        path = directory / rel
        if not path.is_file():
            problems.append((path, f"{path} is missing (the manifest lists it)"))
        elif path.stat().st_size != meta["size"]:
            problems.append((path, f"{path} was truncated or replaced: it has {path.stat().st_size} bytes, "
                                   f"the manifest records {meta['size']}"))
        elif sha256_file(path) != meta["sha256"]:
            problems.append((path, f"{path} is corrupt: its sha256 differs from the one the manifest records"))
    return problems


def _preprocess_problems(directory: Path, manifest: dict) -> list[Problem]:
    from .mds_check import split_problems

    return [p for split in manifest.get("splits", []) for p in split_problems(directory / split, manifest)]


def _neighbor_problems(directory: Path, manifest: dict) -> list[Problem]:
    from .neighbor_artifact import TABLE_FILES, load_table, validate_neighbor_arrays

    vocab = (manifest.get("tokenizer") or {}).get("vocab_size")
    k_max, assoc_k = (manifest.get("config") or {}).get("k_max"), (manifest.get("config") or {}).get("assoc_k")
    expected = {"neighbors": (vocab, k_max), "similarities": (vocab, k_max), "valid_vocab": (vocab,),
                "prior_support": (vocab,), "unigram_prior": (vocab,),
                "semantic_assoc_indices": (vocab, None if assoc_k is None else 1 + assoc_k),
                "semantic_assoc_weights": (vocab, None if assoc_k is None else 1 + assoc_k)}
    problems, arrays = [], {}
    for name in TABLE_FILES:
        path = directory / f"{name}.npy"
        if not path.is_file():
            problems.append((path, f"{path} is missing"))
            continue
        try:
            arrays[name] = array = load_table(path)
        except ArtifactError as exc:
            problems.append((path, str(exc)))
            continue
        want = expected[name]
        if array.ndim != len(want) or any(w is not None and w != got for w, got in zip(want, array.shape)):
            shown = "x".join("?" if w is None else str(w) for w in want)
            problems.append((path, f"{path} has shape {list(array.shape)}, its manifest implies [{shown}]"))
    if not problems:
        try:
            validate_neighbor_arrays(arrays, str(directory))
        except ArtifactError as exc:
            problems.append((directory, str(exc)))
    return problems


def _export_problems(directory: Path, manifest: dict) -> list[Problem]:
    import torch

    from pipeline.core.model import build_model

    from .export_artifact import check_weights_match, read_export_config

    try:
        config, model_cfg = read_export_config(directory)
        with torch.device("meta"):  # names and shapes only: no memory for the weights
            model = build_model(model_cfg)
        check_weights_match(directory, model)
    except ArtifactError as exc:
        return [(directory / "model.safetensors", str(exc))]
    record = config.get("neighbor_tables")
    return _carried_table_problems(directory, record, manifest) if record else []


def _carried_table_problems(directory: Path, record: dict, manifest: dict) -> list[Problem]:
    """The neighbour tables an export carries: config.json's sha256s are the manifest's, the arrays consistent."""
    from .neighbor_artifact import load_table, validate_neighbor_arrays

    problems, arrays, outputs = [], {}, manifest.get("outputs", {})
    for name, entry in record["files"].items():
        path = directory / record["dir"] / name
        if (outputs.get(f"{record['dir']}/{name}") or {}).get("sha256") != entry["sha256"]:
            problems.append((path, f"{path}: config.json records another sha256 than the manifest (or none)"))
        elif path.is_file():
            try:
                arrays[name.removesuffix(".npy")] = load_table(path)  # the re-hash above checked its content
            except ArtifactError as exc:
                problems.append((path, str(exc)))
    if not problems:
        try:
            validate_neighbor_arrays(arrays, str(directory / record["dir"]))
        except ArtifactError as exc:
            problems.append((directory / record["dir"], str(exc)))
    return problems


DEEP_CHECKS: dict[str, Callable[[Path, dict], list[Problem]]] = {
    "preprocess": _preprocess_problems, "preprocess-group": _preprocess_problems,
    "neighbor_index": _neighbor_problems, "export": _export_problems}


def artifact_problems(directory: str | Path) -> list[str]:
    """One line per problem of a stage artifact (empty: clean); ArtifactError when it has no manifest.json."""
    directory = Path(directory)
    if not (directory / "manifest.json").is_file():
        raise ArtifactError(f"{directory} is not an artifact (no manifest.json)")
    try:
        manifest = load_manifest(directory, check_files=False)  # parses it and checks its self-checksum
    except ArtifactError as exc:
        return [str(exc)]
    problems = output_problems(directory, manifest)
    damaged = {path for path, _ in problems}
    deep = DEEP_CHECKS.get(manifest.get("stage"))
    if deep is not None:
        try:
            problems += [p for p in deep(directory, manifest) if p[0] not in damaged]
        except (ValueError, TypeError, KeyError, OSError, RuntimeError) as exc:  # too damaged to look inside
            problems.append((directory, f"{directory}: the {manifest.get('stage')} check could not finish "
                                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"))
    return [line for _, line in problems]


def report(prog: str, paths: list[str], check: Callable[[Path], tuple[str, Callable[[], list[str]]]]) -> int:
    """Run ``check`` on every path and print one line per problem (stdout), then a verdict per path.

    ``check(path)`` returns (what the path is, the function that lists its problems) or raises a
    StageError when the path is none of the things the command checks: a usage error, exit 2, before
    anything is checked. Exit 0 when every path is clean, 1 otherwise.
    """
    with stage_errors(prog):
        targets = [(Path(p), *check(Path(p))) for p in paths]
    found = 0
    for path, what, problems_of in targets:
        with stage_errors(prog):
            problems = problems_of()
        for line in problems:
            print(line, flush=True)
        found += len(problems)
        verdict = "ok" if not problems else f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        print(f"{path}: {verdict} ({what})", file=sys.stderr if problems else sys.stdout, flush=True)
    return 1 if found else 0


def artifact_check(stages: Iterable[str] | None = None):
    """A ``report`` check for stage artifacts (of one of ``stages`` when given)."""
    stages = tuple(stages or ())

    def check(path: Path) -> tuple[str, Callable[[], list[str]]]:
        if not path.is_dir():
            raise StageError(f"{path} does not exist or is not a directory")
        if not (path / "manifest.json").is_file():
            raise StageError(f"{path} is not an artifact (no manifest.json)")
        try:
            stage = json.loads((path / "manifest.json").read_text()).get("stage")
        except (OSError, ValueError, AttributeError):
            stage = None  # unreadable: artifact_problems reports it
        if stages and stage is not None and stage not in stages:
            raise StageError(f"{path} holds a {stage!r} artifact, not {' / '.join(stages)}")
        return f"{stage or 'unknown'} artifact", lambda: artifact_problems(path)

    return check
