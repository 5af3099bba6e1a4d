"""Who this process is in a training job, before and after torch.distributed starts.

The deepspeed launcher and torchrun export RANK / WORLD_SIZE / LOCAL_RANK; ``srun`` with one task per
GPU (slurm/train.sh) exports SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID instead; a plain
``python pipeline/train.py`` has none and is a world of one. DeepSpeed is imported only when the
process group starts, so the lock and the rank can be read cheaply first.
"""
from __future__ import annotations

import contextlib
import os
import socket

import torch

from pipeline.common.locks import DirectoryLock, run_dir_lock_path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_rank() -> int:
    """The global rank the launcher gave this process, before torch.distributed starts (as init_distributed
    maps it: RANK from deepspeed / torchrun, SLURM_PROCID from srun, else a world of one)."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return int(os.environ.get("SLURM_PROCID", "0"))
    return 0


def lock_run_dir(run_dir: str, break_lock: bool):
    """Rank 0 takes the run directory's one lock before anything writes there; the other ranks write
    only after the rendezvous with rank 0 (init_distributed), so they never touch the lock."""
    if launcher_rank() != 0:
        return contextlib.nullcontext()
    return DirectoryLock(run_dir_lock_path(run_dir), what=f"run directory {run_dir}", break_lock=break_lock)


def init_distributed(local_rank_arg: int | None):
    """torch.distributed through DeepSpeed; a single process without a launcher gets a world of one."""
    import deepspeed

    from pipeline.common.cpu_host import keep_freed_memory, release_deepspeed_shm
    from pipeline.training.data import set_streaming_env
    from pipeline.training.loop import Dist

    if "RANK" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        # srun with one task per GPU (slurm/train.sh): SLURM numbers the ranks, the script sets MASTER_*.
        os.environ.update(RANK=os.environ["SLURM_PROCID"], WORLD_SIZE=os.environ["SLURM_NTASKS"],
                          LOCAL_RANK=os.environ["SLURM_LOCALID"],
                          LOCAL_WORLD_SIZE=os.environ.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0])
    if "RANK" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", local_rank_arg or 0))
    # The deepspeed launcher exports LOCAL_SIZE; torchrun exports LOCAL_WORLD_SIZE.
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", world)))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    if not cuda:  # pipeline/common/cpu_host.py
        keep_freed_memory()  # no caching allocator on CPU: keep the per-step tensors' pages
        release_deepspeed_shm(rank, torch.distributed.barrier)  # else 69 MB per rank stay in /dev/shm
    set_streaming_env(rank, world, local_rank, local_world)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return Dist(rank, world, local_rank, local_world, device)
