"""Streaming data for training: the train split shuffled and sharded by rank, exactly resumable.

The data are a list of streams (pipeline/training/streams.py; ``--preprocessed DIR`` is one local
stream), each a preprocess artifact read through streaming's ``Stream`` with ``split="train"``
(validation: ``"validation"``). Sample ids are global: stream i's samples are ids
``sample_offset_per_stream[i] + [0, samples_per_stream[i])`` (``stream_table`` writes the map).

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

from pipeline.training.streams import DataSpec, allocate, validation_weights


def set_streaming_env(rank: int, world_size: int, local_rank: int, local_world_size: int) -> None:
    """The variables streaming's World.detect() reads, consistent with torch.distributed."""
    os.environ["RANK"] = str(rank)
    os.environ["WORLD_SIZE"] = str(world_size)
    os.environ["LOCAL_RANK"] = str(local_rank)
    os.environ["LOCAL_WORLD_SIZE"] = str(local_world_size)


def clean_stale_shared_memory() -> None:
    """Remove shared memory left by a killed run, never a live run's (shared_memory.py). Collective: call
    on every rank (local rank 0 cleans, then a barrier)."""
    from pipeline.training.shared_memory import clean_stale_shared_memory as _clean

    _clean()


def mark_registered(dataset) -> None:
    """Create the dataset's cache filelock file now rather than at its first download.

    With a remote, streaming refuses a cache that another registration lists ("Reused local
    directory") unless that registration's filelock file exists. A run killed before a dataset had
    downloaded anything (validation before its first evaluation) leaves a registration without one,
    and streaming's cleaner, which stops at the first free prefix, may not remove it: the next run
    would be refused. With the file in place from the start, a dead run's registration is skipped,
    as it is for every dataset that has downloaded a shard.
    """
    path = getattr(dataset, "_cache_filelock_path", None)
    if path and any(stream.remote for stream in dataset.streams):
        Path(path).touch(exist_ok=True)


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


def _streams(specs, split: str, weighted: bool) -> list:
    from streaming import Stream

    return [Stream(remote=spec.remote, local=spec.local, split=split, **(spec.weights() if weighted else {}))
            for spec in specs]


def build_train_loader(data: DataSpec, micro_batch: int, shuffle_seed: int, num_canonical_nodes: int,
                       num_workers: int = 0):
    """(dataset, StreamingDataLoader) over the train streams' mixture, shuffled, partitioned over the ranks."""
    from streaming import StreamingDataLoader

    dataset = _tokens_dataset_class()(streams=_streams(data.streams, "train", weighted=True), shuffle=True,
                                      shuffle_seed=shuffle_seed, num_canonical_nodes=num_canonical_nodes,
                                      batch_size=micro_batch, predownload=None, epoch_size=data.epoch_size,
                                      download_timeout=data.download_timeout, download_retry=data.download_retry)
    mark_registered(dataset)
    loader = StreamingDataLoader(dataset, batch_size=micro_batch, num_workers=num_workers, drop_last=True,
                                 persistent_workers=False, pin_memory=torch.cuda.is_available())
    return dataset, loader


def stream_table(dataset, specs) -> dict:
    """What one epoch draws from each stream, and which global sample ids are whose (RUN_DIR/streams.json)."""
    rows = []
    for i, (spec, stream) in enumerate(zip(specs, dataset.streams)):
        rows.append({**spec.to_dict(), "samples": int(dataset.samples_per_stream[i]),
                     "sample_offset": int(dataset.sample_offset_per_stream[i]),
                     "choose_per_epoch": int(stream.choose), "repeat": float(stream.repeat),
                     "proportion": float(stream.proportion)})
    return {"epoch_size": int(dataset.epoch_size), "streams": rows}


class ValidationSet:
    """A fixed slice of the validation streams, read by index: rank r takes rows r, r + world, ...

    The same rows every evaluation, so validation NELBO curves are comparable across steps. With several
    streams the slice takes each stream's first rows, as many as its share of the mixture
    (``streams.validation_weights``); with one stream it is the split's first rows.
    """

    def __init__(self, data: DataSpec, rank: int, world_size: int, micro_batch: int, num_batches: int):
        self.dataset = _tokens_dataset_class()(streams=_streams(data.validation, "validation", weighted=False),
                                               shuffle=False, batch_size=micro_batch, predownload=None,
                                               download_timeout=data.download_timeout,
                                               download_retry=data.download_retry)
        mark_registered(self.dataset)
        sizes = [int(n) for n in self.dataset.samples_per_stream]
        total = sum(sizes)
        wanted = min(total, micro_batch * num_batches * world_size)
        counts = allocate(wanted, validation_weights(data.validation, sizes), sizes)
        rows = [int(offset) + j for offset, n in zip(self.dataset.sample_offset_per_stream, counts) for j in range(n)]
        self.rows_per_stream = dict(zip((s.name for s in data.validation), counts))
        self.indices = rows[rank:wanted - wanted % world_size:world_size]
        self.micro_batch = micro_batch
        if not self.indices:
            names = ", ".join(s.where for s in data.validation)
            raise ValueError(f"{names}: validation split has {total} rows, fewer than world size {world_size}")

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
