"""Streaming data for training: the train split shuffled and sharded by rank, exactly resumable.

mosaicml-streaming's ``StreamingDataset`` partitions every epoch over ranks and dataloader workers
deterministically from (shuffle_seed, num_canonical_nodes, epoch), and ``StreamingDataLoader``
records how many samples were yielded, so ``state_dict()`` / ``load_state_dict()`` resume mid-epoch
without repeating or skipping a sample, also on another world size (num_canonical_nodes is fixed).

Every shard is checked against the sha1 its index.json records the first time a process reads it
(``pipeline.common.mds_check``): a damaged shard stops training with one line naming the file.

Under the deepspeed launcher ranks on a node share memory segments named after the world layout;
``LOCAL_WORLD_SIZE`` must be set (the launcher sets ``LOCAL_SIZE``) or they collide.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch


def set_streaming_env(rank: int, world_size: int, local_rank: int, local_world_size: int) -> None:
    """The variables streaming's World.detect() reads, consistent with torch.distributed."""
    os.environ["RANK"] = str(rank)
    os.environ["WORLD_SIZE"] = str(world_size)
    os.environ["LOCAL_RANK"] = str(local_rank)
    os.environ["LOCAL_WORLD_SIZE"] = str(local_world_size)


def clean_stale_shared_memory() -> None:
    """Remove shared memory left by a killed run. Collective: call on every rank (streaming cleans
    on local rank 0 and then runs a barrier itself)."""
    from streaming.base.util import clean_stale_shared_memory as _clean

    _clean()


def _tokens_dataset_class():
    from pipeline.common.mds_check import verified_dataset_class

    class TokenDataset(verified_dataset_class()):
        """StreamingDataset yielding {"tokens": int64 [L], "sample_id": int}: ids make resume testable.

        Each shard is checked against its index.json sha1 before it is first read (ShardCorruptError).
        """

        def get_item(self, sample_id: int, retry: int = 7):
            row = super().get_item(sample_id, retry)
            return {"tokens": np.asarray(row["tokens"], dtype=np.int64), "sample_id": int(sample_id)}

    return TokenDataset


def build_train_loader(split_dir: str | Path, micro_batch: int, shuffle_seed: int, num_canonical_nodes: int,
                       num_workers: int = 0):
    """(dataset, StreamingDataLoader) over one split, shuffled, partitioned over the ranks."""
    from streaming import StreamingDataLoader

    dataset = _tokens_dataset_class()(local=str(split_dir), shuffle=True, shuffle_seed=shuffle_seed,
                                      num_canonical_nodes=num_canonical_nodes, batch_size=micro_batch,
                                      predownload=None)
    loader = StreamingDataLoader(dataset, batch_size=micro_batch, num_workers=num_workers, drop_last=True,
                                 persistent_workers=False, pin_memory=torch.cuda.is_available())
    return dataset, loader


class ValidationSet:
    """A fixed slice of the validation split, read by index: rank r takes rows r, r + world, ...

    The same rows every evaluation, so validation NELBO curves are comparable across steps.
    """

    def __init__(self, split_dir: str | Path, rank: int, world_size: int, micro_batch: int, num_batches: int):
        self.dataset = _tokens_dataset_class()(local=str(split_dir), shuffle=False, batch_size=micro_batch,
                                               predownload=None)
        total = len(self.dataset)
        wanted = min(total, micro_batch * num_batches * world_size)
        self.indices = list(range(rank, wanted - wanted % world_size, world_size))
        self.micro_batch = micro_batch
        if not self.indices:
            raise ValueError(f"{split_dir}: validation split has {total} rows, fewer than world size {world_size}")

    def batches(self):
        for start in range(0, len(self.indices), self.micro_batch):
            rows = [self.dataset[i]["tokens"] for i in self.indices[start:start + self.micro_batch]]
            yield torch.from_numpy(np.stack(rows))


class BatchStream:
    """Endless micro-batches from a StreamingDataLoader: a new epoch starts when one ends.

    ``state_dict()`` is the loader's (samples yielded in the current epoch, over all ranks).
    """

    def __init__(self, loader):
        self.loader = loader
        self._it = None

    def next(self) -> dict:
        if self._it is None:
            self._it = iter(self.loader)
        try:
            return next(self._it)
        except StopIteration:
            self._it = iter(self.loader)  # next epoch
            return next(self._it)

    def state_dict(self) -> dict | None:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)
        self._it = None
