"""Running a sampler over many samples: deterministic per-batch seeds, rank splitting, file gather.

Samples are cut into global batches of ``batch_size`` consecutive indices; batch k is drawn with a
generator seeded from (seed, k), so a sample's tokens depend on (seed, batch_size, index) only,
not on the number of processes. With a template (prompts), sample i uses its row i mod n. Rank r of
WORLD_SIZE takes the batches k = r, r + W, ...; each rank writes ``part-r.jsonl`` into a parts
directory and rank 0 merges them in index order once every rank has marked its part done.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline.common.artifacts import StageError

from .base import SamplerConfig
from .generate import generate
from .template import GenerationTemplate, trim_at_stop


class GatherTimeoutError(StageError, TimeoutError):
    """Rank 0 waited longer than its timeout for the other ranks' parts (a user/cluster error)."""


def dist_info() -> tuple[int, int]:
    """(rank, world_size) from the torchrun / deepspeed environment; (0, 1) when absent."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def batch_seed(seed: int, batch_index: int) -> int:
    """A 63-bit seed for batch ``batch_index`` derived from the run seed (stable across versions)."""
    digest = hashlib.sha256(f"semdlm-sample:{seed}:{batch_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def rank_batches(num_samples: int, batch_size: int, rank: int, world: int) -> list[tuple[int, int, int]]:
    """(batch index, first sample index, size) of the batches this rank draws."""
    out = []
    for k, start in enumerate(range(0, num_samples, batch_size)):
        if k % world == rank:
            out.append((k, start, min(batch_size, num_samples - start)))
    return out


@torch.no_grad()
def draw_samples(model, kernel, cfg: SamplerConfig, num_samples: int, batch_size: int, seed: int,
                 association=None, rank: int = 0, world: int = 1, progress: bool = True,
                 template: GenerationTemplate | None = None, stop_id: int | None = None) -> list[dict]:
    """This rank's samples as records {index, ids, seed, batch}, plus the network calls made; with a
    ``template`` also its text (``prompt`` / ``infill``), with ``stop_id`` the ids cut after the first
    ``stop_id`` past the prompt and ``length``, ``stopped_at_eos``; with ``cfg.entropy_stop`` the ids cut
    where generate stopped a low-entropy row, ``stopped_at_entropy`` and ``length``."""
    records = []
    batches = rank_batches(num_samples, batch_size, rank, world)
    for k, start, size in tqdm(batches, desc=f"sampling (rank {rank})", disable=not progress):
        # The full batch size is always drawn so that sample i is the same whatever the last batch.
        gen_seed = batch_seed(seed, k)
        gen = torch.Generator(device=kernel.device).manual_seed(gen_seed)
        rows = template.for_batch(start, batch_size, kernel.device) if template is not None else None
        ids, den = generate(model, kernel, cfg, batch_size, gen, association, template=rows, stop_id=stop_id)
        cut = trim_at_stop(ids, stop_id, rows.prompt_lens if rows is not None else 0) if stop_id is not None else None
        for row in range(size):
            rec = {"index": start + row, "ids": ids[row].tolist(), "seed": seed,
                   "batch_seed": gen_seed, "row": row, "network_calls": den.calls}
            if rows is not None:
                rec[rows.kind] = rows.texts[row] if rows.texts else None
            if cut is not None:
                rec["ids"], rec["stopped_at_eos"] = cut[row]
            if den.entropy_cut is not None:  # BD3-LM's low-entropy stop: cut before the repetitive window
                at = int(den.entropy_cut[row])
                rec["stopped_at_entropy"] = 0 <= at < len(rec["ids"])
                if rec["stopped_at_entropy"]:
                    rec["ids"] = rec["ids"][:at]
            if cut is not None or den.entropy_cut is not None:
                rec["length"] = len(rec["ids"])
            records.append(rec)
    return records


def write_part(parts_dir: Path, rank: int, records: list[dict]) -> None:
    parts_dir.mkdir(parents=True, exist_ok=True)
    tmp = parts_dir / f".part-{rank}.jsonl.tmp"
    with open(tmp, "w") as fh:
        for rec in records:
            fh.write(json.dumps(rec) + "\n")
    os.replace(tmp, parts_dir / f"part-{rank}.jsonl")


def gather_parts(parts_dir: Path, world: int, timeout_s: float = 24 * 3600, poll_s: float = 2.0) -> list[dict]:
    """Rank 0: wait for every part, then return all records sorted by index."""
    deadline = time.time() + timeout_s
    paths = [parts_dir / f"part-{r}.jsonl" for r in range(world)]
    while not all(p.is_file() for p in paths):
        if time.time() > deadline:
            missing = [p.name for p in paths if not p.is_file()]
            raise GatherTimeoutError(f"{parts_dir}: parts {missing} did not arrive in {timeout_s:.0f}s")
        time.sleep(poll_s)
    records = [json.loads(line) for p in paths for line in p.read_text().splitlines() if line]
    return sorted(records, key=lambda r: r["index"])
