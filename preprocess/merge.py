"""Joining the groups of a multi-node preprocess run into one artifact.

Each group ``OUT.groups/group-IIIII-of-NNNNN`` is a complete artifact of its own. Merging
hard-links (or copies, across file systems) every group's shards into ``OUT/<split>/`` under a
``gIIIII.`` prefix, writes one MDS ``index.json`` listing them in group order, and sums the
unigram counts and statistics.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from pipeline.common.artifacts import ArtifactError, StageRun, load_manifest

from .build import GROUP_STAGE, SCHEMA_VERSION, STAGE, group_dir

_SUMMED = ("lines", "documents", "decode_replaced_lines", "sequences", "tokens", "truncated_documents")


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _check_groups(manifests: list[dict], dirs: list[Path]) -> None:
    first = manifests[0]
    for d, m in zip(dirs, manifests):
        cfg = {k: v for k, v in m["config"].items() if k != "shard_index"}
        ref = {k: v for k, v in first["config"].items() if k != "shard_index"}
        if cfg != ref:
            raise ArtifactError(f"{str(d)!r} was built with another config than {str(dirs[0])!r}")
        if m["tokenizer"]["identity"] != first["tokenizer"]["identity"]:
            raise ArtifactError(f"{str(d)!r} was built with another tokenizer than {str(dirs[0])!r}")


def merge_groups(out: str | Path, num_shards: int, force: bool = False, log=print, break_lock: bool = False) -> Path:
    out = Path(out)
    dirs = [group_dir(out, i, num_shards) for i in range(num_shards)]
    manifests = [load_manifest(d, stage=GROUP_STAGE) for d in dirs]  # refuses missing/incomplete groups
    _check_groups(manifests, dirs)
    config = {k: v for k, v in manifests[0]["config"].items() if k != "shard_index"}
    config["merged_groups"] = num_shards
    run = StageRun(STAGE, out, config=config, upstream={d.name: d for d in dirs},
                   tokenizer=manifests[0]["tokenizer"], schema_version=SCHEMA_VERSION, force=force,
                   break_lock=break_lock)
    if run.is_up_to_date():
        log(f"{out}: up to date (use --force to rebuild)")
        return out
    splits = manifests[0]["splits"]
    with run as tmp:
        counts = None
        stats: dict[str, dict] = {}
        for split in splits:
            (tmp / split).mkdir()
            shards, merged = [], {}
            for i, d in enumerate(dirs):
                index = json.loads((d / split / "index.json").read_text())
                for shard in index["shards"]:
                    for key in ("raw_data", "zip_data"):
                        if shard.get(key):  # with compression only zip_data exists on disk
                            name = f"g{i:05d}.{shard[key]['basename']}"
                            if (d / split / shard[key]["basename"]).exists():
                                _link(d / split / shard[key]["basename"], tmp / split / name)
                            shard[key]["basename"] = name
                    shards.append(shard)
                _accumulate(merged, json.loads((d / split / "stats.json").read_text()))
            (tmp / split / "index.json").write_text(json.dumps({"version": 2, "shards": shards}, sort_keys=True))
            slots = merged["sequences"] * manifests[0]["seq_len"]
            merged["pad_fraction"] = round(1 - merged["tokens"] / slots, 6) if slots else 0.0
            stats[split] = merged
            (tmp / split / "stats.json").write_text(json.dumps(merged, indent=2) + "\n")
        for d in dirs:
            group_counts = np.load(d / "unigram_counts.npy", allow_pickle=False)
            counts = group_counts if counts is None else counts + group_counts
        np.save(tmp / "unigram_counts.npy", counts)
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        run.extra.update({k: manifests[0][k] for k in ("splits", "seq_len", "token_dtype", "column", "special_ids")})
        run.extra["stats"] = stats
    log(f"{out}: merged {num_shards} groups")
    return out


def _accumulate(total: dict, part: dict) -> None:
    total.setdefault("split", part["split"])
    for key in _SUMMED:
        total[key] = total.get(key, 0) + part[key]
    skipped = total.setdefault("skipped_lines", {})
    for reason, n in part["skipped_lines"].items():
        skipped[reason] = skipped.get(reason, 0) + n
