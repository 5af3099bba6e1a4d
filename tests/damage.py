"""Damaging files the way disks and hand edits do (test helpers for the corrupt-input tests)."""
from __future__ import annotations

from pathlib import Path


def flip_bit(path: Path, offset: int | None = None) -> None:
    """Flip the lowest bit of one byte (the middle one by default): same size, other content."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path, keep: int) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(keep)
