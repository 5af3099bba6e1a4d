"""Reading MDS splits back through the real StreamingDataset (test helper)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def read_split(directory: str | Path) -> np.ndarray:
    """All sequences of an MDS directory, in order, as an int64 array [N, L]."""
    from streaming import StreamingDataset

    from pipeline.common.mds_check import released_shared_memory

    with released_shared_memory():  # one process reads many splits: streaming's shared memory goes with each
        ds = StreamingDataset(local=str(directory), shuffle=False, batch_size=1, predownload=None)
        rows = [np.array(ds[i]["tokens"], dtype=np.int64) for i in range(len(ds))]
        del ds
    return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.int64)


def write_ramp_split(directory: str | Path, rows: int) -> Path:
    """An MDS split of ``rows`` sequences, row i = [i, i+1, ..., i+7] (int64): a tiny split to read back."""
    from streaming import MDSWriter

    with MDSWriter(out=str(directory), columns={"tokens": "ndarray:int64"}) as writer:
        for i in range(rows):
            writer.write({"tokens": np.arange(i, i + 8, dtype=np.int64)})
    return Path(directory)
