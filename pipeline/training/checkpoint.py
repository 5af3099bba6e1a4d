"""Checkpoints of a training run: DeepSpeed's engine state plus everything needed for an exact resume.

Layout under ``RUN_DIR/checkpoints/``::

    global_step{N}/                 DeepSpeed's files (model, ZeRO-partitioned optimizer states)
    global_step{N}/rank_state_{r}.pt per-rank RNG states (python, numpy, torch, cuda) and EMA
    global_step{N}/semdlm_checkpoint.json   written last, after every rank saved: marks it complete
    latest                          DeepSpeed's pointer (we resume from the newest *complete* tag)

``client_state`` (saved once by DeepSpeed, returned on every rank) holds the step, tokens seen, the
dataloader state, rank 0's RNG states, the EMA, the config identity + hash and
``universal_checkpoint_info`` (what ``ds_to_universal`` needs to re-shard onto another world size).
``save_checkpoint`` / ``load_checkpoint`` are collective: call them on every rank. A save that
fails to write (disk full, quota, I/O error) removes its incomplete tag and raises
:class:`CheckpointWriteError`; older tags are pruned only after a new one is complete, so the
newest complete checkpoint stays loadable.
"""
from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.common import faults
from pipeline.common.artifacts import StageError, canonical_json
from pipeline.core.kernels import KernelConfig
from pipeline.core.model import ModelConfig

from .checkpoint_verify import check_sizes, read_marker_file, record_files

MARKER = "semdlm_checkpoint.json"
TAG_RE = re.compile(r"^global_step(\d+)$")
UNIVERSAL_LATEST = "latest_universal"


class CheckpointWriteError(StageError, OSError):
    """A checkpoint could not be written; the message names the newest complete one, which is intact."""


def tag_for(step: int) -> str:
    return f"global_step{step}"


# --------------------------------------------------------------------------- RNG state
def rng_state() -> dict:
    """All RNG states as tensors/ints only, so the file loads with torch.load(weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- finding checkpoints
def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def complete_tags(run_dir: Path) -> list[str]:
    """Tags that hold our completion marker, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p.name) for p in root.iterdir()
             if (m := TAG_RE.match(p.name)) and (p / MARKER).is_file()]
    return [name for _, name in sorted(found)]


def latest_tag(run_dir: Path, universal: bool = False) -> str | None:
    if universal:
        pointer = checkpoint_dir(run_dir) / UNIVERSAL_LATEST
        return pointer.read_text().strip() if pointer.is_file() else None
    tags = complete_tags(run_dir)
    return tags[-1] if tags else None


def read_marker(run_dir: Path, tag: str) -> dict:
    path = checkpoint_dir(run_dir) / tag / MARKER
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent} is not a complete checkpoint (no {MARKER})")
    return read_marker_file(path)


def check_files(run_dir: Path, tag: str) -> None:
    """Before loading a tag: its files as saved (sizes, see checkpoint_verify), or CheckpointDamagedError."""
    check_sizes(checkpoint_dir(run_dir), tag, MARKER, complete_tags(run_dir))


def check_identity(saved: dict, current: dict, where: str) -> None:
    """Refuse to resume a run whose model / kernel / objective / data format changed."""
    if "posterior" not in saved and "posterior" in current:  # a run from before the record: read as it was
        from pipeline.core.posterior import LEGACY

        saved = {**saved, "posterior": LEGACY.to_dict()}
    if canonical_json(saved) == canonical_json(current):
        return
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{key}.{k}: {a.get(k)!r} -> {b.get(k)!r}"
                      for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            diffs.append(f"{key}: {a!r} -> {b!r}")
    raise ValueError(f"refusing to resume {where}: the checkpoint was trained with a different configuration "
                     f"({'; '.join(diffs)}). Use a new --run-dir, or restore the original settings.")


# --------------------------------------------------------------------------- save / load
def save_checkpoint(engine, run_dir: Path, step: int, client_state: dict, marker: dict, rank: int,
                    keep_last: int, barrier) -> str:
    """Collective save of tag global_step{step}; rank 0 then marks it complete and prunes old tags."""
    from deepspeed.checkpoint.constants import (
        UNIVERSAL_CHECKPOINT_INFO,
        UNIVERSAL_CHECKPOINT_VERSION_KEY,
        UNIVERSAL_CHECKPOINT_VERSION_VALUE,
    )

    tag = tag_for(step)
    root = checkpoint_dir(run_dir)
    client_state = dict(client_state)
    client_state[UNIVERSAL_CHECKPOINT_INFO] = {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}
    if rank == 0 and (root / tag).is_dir() and not (root / tag / MARKER).is_file():
        shutil.rmtree(root / tag)  # left by a save that was killed: start this tag from scratch
    barrier()
    faults.point("save.begin", step, rank)
    faults.tear_nth_save(engine, step, rank)
    try:
        engine.save_checkpoint(str(root), tag=tag, client_state=client_state)
        torch.save({"rng": rng_state(), "ema": client_state.get("ema")}, root / tag / f"rank_state_{rank}.pt")
        faults.point("save.rank_state", step, rank)
        barrier()
        faults.point("save.before_marker", step, rank)
        if rank == 0:
            part = root / tag / (MARKER + ".part")
            files = record_files(root / tag, skip=MARKER)  # every rank's files, after the barrier
            part.write_text(json.dumps({**marker, "tag": tag, "step": step, "files": files}, indent=2,
                                       sort_keys=True) + "\n")
            part.replace(root / tag / MARKER)
    except (OSError, RuntimeError) as exc:
        if not _is_write_failure(exc):
            raise
        if not (root / tag / MARKER).is_file():  # never resumed from: free its space
            shutil.rmtree(root / tag, ignore_errors=True)
        previous = latest_tag(run_dir)
        kept = f"the newest complete checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        raise CheckpointWriteError(f"could not write checkpoint {tag} to {root} ({_first_line(exc)}); is the disk "
                                   f"full? The incomplete checkpoint was removed and {kept}; free space and rerun "
                                   "to resume from it.") from exc
    faults.point("save.after_marker", step, rank)
    if rank == 0:
        prune(run_dir, keep_last, step)
    barrier()
    return tag


def prune(run_dir: Path, keep_last: int, step: int) -> None:
    """Remove complete tags older than the newest ``keep_last`` and incomplete tags older than ``step``.

    A tag loses its marker before its files: a kill mid-prune leaves an incomplete tag (never resumed
    from, removed by the next prune), never a marked tag with files missing.
    """
    root = checkpoint_dir(run_dir)
    keep = set(complete_tags(run_dir)[-keep_last:])
    for path in sorted(root.iterdir()):
        m = TAG_RE.match(path.name)
        if not m or path.name in keep or int(m.group(1)) >= step:
            continue
        marker = path / MARKER
        if marker.is_file():
            marker.unlink()
            faults.point("save.prune", step, 0)
        shutil.rmtree(path, ignore_errors=True)


def _is_write_failure(exc: BaseException) -> bool:
    """An OSError of the filesystem, or torch.save's zip writer failing (a RuntimeError from
    inline_container.cc, "file write failed" / "unexpected pos", which is what a full disk gives)."""
    if isinstance(exc, OSError):
        return True
    text = str(exc)
    return "PytorchStreamWriter" in text or "inline_container" in text


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def load_checkpoint(engine, run_dir: Path, tag: str, rank: int, world_size: int, universal: bool) -> dict:
    """Collective load; returns client_state with this rank's RNG state under "rng"."""
    path, client_state = engine.load_checkpoint(str(checkpoint_dir(run_dir)), tag=tag, load_optimizer_states=True,
                                                load_lr_scheduler_states=True)
    if path is None:
        raise FileNotFoundError(f"DeepSpeed could not load checkpoint {tag} from {checkpoint_dir(run_dir)}")
    # ZeRO-3: loading leaves some parameters gathered; the first traced step would then record a
    # fetch order the later steps do not follow ("tracing error"). Re-partition everything first.
    engine.empty_partition_cache()
    own = checkpoint_dir(run_dir) / tag / f"rank_state_{rank}.pt"
    same_world = client_state.get("world_size") == world_size
    if own.is_file() and same_world and not universal:
        state = torch.load(own, map_location="cpu", weights_only=True)
        client_state["rng"] = state["rng"]
        if state.get("ema") is not None:
            client_state["ema"] = state["ema"]
    # else: another world size; rank 0's RNG state is the best we have (the run's randomness is
    # a pure function of (seed, step, rank) anyway, see pipeline/training/loop.py).
    return client_state


# --------------------------------------------------------------------------- export support
@dataclass
class CheckpointForExport:
    model_cfg: ModelConfig
    kernel_cfg: KernelConfig | None
    kind: str
    tokenizer_info: dict
    artifacts: dict
    training: dict
    weights: dict
    states_file: Path  # the file the weights were read from
    posterior: dict | None = None  # how the output is read (pipeline/core/posterior.py); None: a run older than it


def read_checkpoint_for_export(run_dir: Path, tag: str | None = None, use_ema: bool = True) -> CheckpointForExport:
    """Weights + configs of a checkpoint read from its files alone (no DeepSpeed engine, one process)."""
    run_dir = Path(run_dir)
    tag = tag or latest_tag(run_dir)
    if tag is None:
        raise FileNotFoundError(f"{run_dir} holds no complete checkpoint (looked in {checkpoint_dir(run_dir)})")
    check_files(run_dir, tag)
    marker = read_marker(run_dir, tag)
    tag_dir = checkpoint_dir(run_dir) / tag
    # ZeRO-0/1/2 write mp_rank_00_model_states.pt; ZeRO-3 writes one per rank (client_state in each).
    candidates = [tag_dir / "mp_rank_00_model_states.pt", tag_dir / "zero_pp_rank_0_mp_rank_00_model_states.pt"]
    states_file = next((c for c in candidates if c.is_file()), None)
    if states_file is None:
        raise FileNotFoundError(f"{tag_dir} holds no model states file ({', '.join(c.name for c in candidates)})")
    states = torch.load(states_file, map_location="cpu", weights_only=True)
    if not use_ema and any(v.numel() == 0 for v in states["module"].values()):
        raise ValueError(f"{tag} is a ZeRO-3 checkpoint: its raw weights are partitioned; export the EMA, or "
                         "consolidate them with DeepSpeed's zero_to_fp32.py")
    if use_ema:
        if not states.get("ema"):
            raise ValueError(f"{tag} holds no EMA weights; pass --raw-weights")
        weights = states["ema"]["weights"]
    else:
        weights = states["module"]
    identity = marker["identity"]
    model_cfg = ModelConfig(**identity["model"])
    kind = "ar" if model_cfg.causal else "diffusion"
    kernel_cfg = KernelConfig(**identity["kernel"]) if kind == "diffusion" else None
    training = {"step": marker["step"], "tokens_seen": marker.get("tokens_seen"), "run_dir": str(run_dir.resolve()),
                "tag": tag, "weights": "ema" if use_ema else "raw"}
    return CheckpointForExport(model_cfg, kernel_cfg, kind, marker["tokenizer"], marker["artifacts"], training,
                               weights, states_file, marker.get("posterior"))
