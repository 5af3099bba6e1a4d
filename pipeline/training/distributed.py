"""Who this process is in a training job, before and after torch.distributed starts.

The deepspeed launcher and torchrun export RANK / WORLD_SIZE / LOCAL_RANK; ``srun`` with one task per
GPU (slurm/train.sh) exports SLURM_NTASKS / SLURM_NODEID / SLURM_LOCALID instead; a plain
``python pipeline/train.py`` has none and is a world of one. DeepSpeed is imported only when the
process group starts, so the lock and the rank can be read cheaply first.

Ranks are numbered node-cyclically (:func:`rank_layout`): torch rank = node + nodes x local rank.
streaming deals the samples of a step round-robin over the nodes first, then over a node's ranks, so
with this numbering torch rank r trains on the same samples, with the same noise, in the same place
of every reduction, whether the job spans one node or several: a run's losses do not depend on its
node count (tests/slurm/test_two_nodes.py, bit for bit). streaming itself is told the block rank
(node x ranks per node + local rank), from which it derives which ranks share a node.
"""
from __future__ import annotations

import contextlib
import functools
import os
import socket
from dataclasses import dataclass

import torch

from pipeline.common.locks import DirectoryLock, run_dir_lock_path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class RankLayout:
    rank: int              # the torch.distributed rank: node + nodes * local_rank
    world_size: int
    local_rank: int
    local_world_size: int  # ranks per node (the same on every node: streaming requires it)
    node: int
    nodes: int

    @property
    def block_rank(self) -> int:
        """The rank streaming is told: node * ranks per node + local rank (its node = rank // local world)."""
        return self.node * self.local_world_size + self.local_rank


def rank_layout(environ=os.environ) -> RankLayout | None:
    """This process's place in the job from the launcher's variables; None without a launcher (a world of one).

    RANK / WORLD_SIZE / LOCAL_RANK / LOCAL_WORLD_SIZE (torchrun) or LOCAL_SIZE (deepspeed) from a launcher,
    whose ranks are numbered node by node (the node is GROUP_RANK, else RANK // ranks per node);
    SLURM_NTASKS / SLURM_NODEID / SLURM_LOCALID from srun, whatever its --distribution."""
    if "RANK" in environ:
        world = int(environ.get("WORLD_SIZE", "1"))
        per_node = int(environ.get("LOCAL_WORLD_SIZE", environ.get("LOCAL_SIZE", world)))
        local = int(environ.get("LOCAL_RANK", int(environ["RANK"]) % per_node))
        node = int(environ["GROUP_RANK"]) if "GROUP_RANK" in environ else int(environ["RANK"]) // per_node
    elif int(environ.get("SLURM_NTASKS", "1")) > 1:
        world, per_node = int(environ["SLURM_NTASKS"]), slurm_local_world_size(environ)
        local, node = int(environ.get("SLURM_LOCALID", "0")), int(environ.get("SLURM_NODEID", "0"))
        if len(set(slurm_tasks_per_node(environ))) > 1:
            raise ValueError(f"srun placed {slurm_tasks_per_node(environ)} ranks on the nodes: every node must run "
                             "the same number (sbatch --ntasks-per-node=N), streaming partitions the data that way")
    else:
        return None
    if per_node < 1 or world % per_node:
        raise ValueError(f"{world} ranks with {per_node} on this node: every node must run the same number of "
                         "ranks (e.g. sbatch --ntasks-per-node=N), streaming partitions the data that way")
    nodes = world // per_node
    return RankLayout(node + nodes * local, world, local, per_node, node, nodes)


def launcher_rank() -> int:
    """This process's torch rank before torch.distributed starts (as init_distributed will number it)."""
    layout = rank_layout()
    return 0 if layout is None else layout.rank


def lock_run_dir(run_dir: str, break_lock: bool):
    """Rank 0 takes the run directory's one lock before anything writes there; the other ranks write
    only after the rendezvous with rank 0 (init_distributed), so they never touch the lock."""
    if launcher_rank() != 0:
        return contextlib.nullcontext()
    return DirectoryLock(run_dir_lock_path(run_dir), what=f"run directory {run_dir}", break_lock=break_lock)


def slurm_tasks_per_node(environ=os.environ) -> list[int]:
    """Tasks on each node of this step, from SLURM_STEP_TASKS_PER_NODE ("2(x3),1": 2 on each of the first three
    nodes, 1 on the fourth; SLURM_TASKS_PER_NODE in a batch script); [SLURM_NTASKS_PER_NODE] when neither is set."""
    layout = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE")
    if not layout:
        return [int(environ.get("SLURM_NTASKS_PER_NODE", "1"))]
    counts = []
    for part in layout.split(","):
        count, _, repeat = part.partition("(x")
        counts += [int(count)] * (int(repeat.rstrip(")")) if repeat else 1)
    return counts


def slurm_local_world_size(environ=os.environ) -> int:
    """The number of this step's tasks on this node (SLURM_NODEID's entry of :func:`slurm_tasks_per_node`);
    --ntasks-per-node alone misses uneven layouts and is absent when the job gave only --ntasks."""
    counts = slurm_tasks_per_node(environ)
    return counts[min(int(environ.get("SLURM_NODEID", "0")), len(counts) - 1)]


def groups_inherit_timeout(timeout) -> None:
    """Make ``torch.distributed.new_group`` default to ``timeout`` (a timedelta) instead of torch's constant.

    torch gives a group made without ``timeout=`` 30 min (gloo) or 10 min (NCCL), whatever
    ``init_process_group`` was told, and DeepSpeed builds its data-parallel group that way
    (``deepspeed/utils/groups.py``, ``_clone_world_group``: ``new_group(ranks)``): every ZeRO collective
    ran on it, so a lost node hung the other ranks 30 min, not ``dist_timeout_s`` (found by the two-node
    test, tests/slurm/test_two_nodes.py). An explicit ``timeout=`` still wins."""
    import torch.distributed as dist

    original = getattr(dist.new_group, "__wrapped__", dist.new_group)

    @functools.wraps(original)
    def new_group(ranks=None, timeout=None, *args, **kwargs):
        return original(ranks, timeout if timeout is not None else new_group.default_timeout, *args, **kwargs)

    new_group.default_timeout = timeout
    dist.new_group = new_group


_LOST_PEER = ("Timed out waiting", "Connection closed by peer", "Connection reset by peer", "timed out",
              "Broken pipe")
_COLLECTIVES = ("gloo", "c10d", "NCCL")  # where the message must come from: not any timeout (a download's)


def lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that lost its peers (the timeout fired, or a peer's connection
    dropped): another rank or node is gone, which is not this rank's bug."""
    import torch.distributed as dist

    message = str(exc)
    return isinstance(exc, (dist.DistError, RuntimeError)) and any(m in message for m in _LOST_PEER) and (
        isinstance(exc, dist.DistError) or any(c in message for c in _COLLECTIVES))


def init_distributed(local_rank_arg: int | None, timeout_s: float = 600.0):
    """torch.distributed through DeepSpeed; a single process without a launcher gets a world of one.

    ``timeout_s`` bounds every collective (TrainConfig.dist_timeout_s): a rank whose peer is gone raises
    instead of waiting forever."""
    import datetime

    import deepspeed

    from pipeline.common.cpu_host import keep_freed_memory, release_deepspeed_shm
    from pipeline.training.data import set_streaming_env
    from pipeline.training.loop import Dist

    if local_rank_arg is not None and "RANK" in os.environ:
        os.environ.setdefault("LOCAL_RANK", str(local_rank_arg))
    layout = rank_layout()
    if layout is None:
        layout = RankLayout(0, 1, 0, 1, 0, 1)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    # what torch.distributed (and DeepSpeed) read: the node-cyclic rank
    os.environ.update(RANK=str(layout.rank), WORLD_SIZE=str(layout.world_size), LOCAL_RANK=str(layout.local_rank),
                      LOCAL_WORLD_SIZE=str(layout.local_world_size))
    rank, world = layout.rank, layout.world_size
    local_rank, local_world = layout.local_rank, layout.local_world_size
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    timeout = datetime.timedelta(seconds=timeout_s)
    groups_inherit_timeout(timeout)  # before DeepSpeed builds its groups
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", timeout=timeout)
    if not cuda:  # pipeline/common/cpu_host.py
        keep_freed_memory()  # no caching allocator on CPU: keep the per-step tensors' pages
        release_deepspeed_shm(rank, torch.distributed.barrier)  # else 69 MB per rank stay in /dev/shm
    set_streaming_env(layout.block_rank, world, local_rank, local_world)  # streaming: the block rank
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return Dist(rank, world, local_rank, local_world, device)
