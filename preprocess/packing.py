"""Packing of token-id streams into fixed-length sequences: lives in :mod:`pipeline.common.packing`
(shared with the evaluate stage, which packs raw held-out sets on the fly exactly like the training
data); re-exported here for the preprocess stage."""
from __future__ import annotations

from pipeline.common.packing import PadTruncatePacker, WrapPacker

__all__ = ["PadTruncatePacker", "WrapPacker"]
