"""Read back an offline W&B run (tests of loggers: [wandb]): the history records of its run-ID.wandb file.

The file is W&B's datastore: a 7-byte header (":W&B", magic, version), then LevelDB-log records (32 KiB
blocks; each record crc32 (4 bytes), length (2, little endian), type (1: full, 2-4: first/middle/last
fragment)) whose payloads are wandb.proto Record messages. The wandb package writes it through its Go
core and ships no Python reader any more.
"""
from __future__ import annotations

import json
from pathlib import Path


def wandb_history(path: Path) -> dict[int, dict]:
    """step -> {key: value} of every history record (nested keys joined with "/")."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", data[:8]
    pos, block, payload, out = 7, 32768, b"", {}
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if kind == 0:
            pos += left
            continue
        payload += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(payload)
            payload = b""
            if rec.WhichOneof("record_type") == "history":
                items = {"/".join(i.nested_key) if i.nested_key else i.key: json.loads(i.value_json)
                         for i in rec.history.item}
                out[int(items.get("_step", rec.history.step.num))] = items
    return out
