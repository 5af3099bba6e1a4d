"""Where a training process sits in a multi-node job (pipeline/training/distributed.py), from the launchers'
variables; the collective timeout every process group gets. The two-node runs themselves:
tests/slurm/test_two_nodes.py."""
from __future__ import annotations

import datetime

import numpy as np
import pytest
import torch
import torch.distributed as dist

from pipeline.training.distributed import (
    groups_inherit_timeout,
    lost_peer,
    rank_layout,
    slurm_local_world_size,
)


def _srun(procid: int, nodeid: int, localid: int, ntasks: int = 4, layout: str = "2(x2)") -> dict:
    return dict(SLURM_NTASKS=str(ntasks), SLURM_PROCID=str(procid), SLURM_NODEID=str(nodeid),
                SLURM_LOCALID=str(localid), SLURM_STEP_TASKS_PER_NODE=layout)


def test_srun_ranks_are_numbered_node_cyclically_whatever_the_distribution():
    # srun --distribution=block: procid 0,1 on node 0, 2,3 on node 1; cyclic: 0,2 on node 0, 1,3 on node 1.
    block = [rank_layout(_srun(p, p // 2, p % 2)) for p in range(4)]
    cyclic = [rank_layout(_srun(p, p % 2, p // 2)) for p in range(4)]
    for layouts in (block, cyclic):
        by_place = {(x.node, x.local_rank): x for x in layouts}
        assert {place: x.rank for place, x in by_place.items()} == {(0, 0): 0, (1, 0): 1, (0, 1): 2, (1, 1): 3}
        assert {place: x.block_rank for place, x in by_place.items()} == {(0, 0): 0, (0, 1): 1, (1, 0): 2, (1, 1): 3}
        assert all((x.world_size, x.local_world_size, x.nodes) == (4, 2, 2) for x in layouts)


def test_the_cyclic_rank_gets_the_samples_of_the_same_rank_on_one_node():
    """streaming deals a step's samples over the nodes first, then over a node's ranks (its 'orig'
    partition): the torch rank node + nodes * local takes what rank r takes when the job has one node."""
    from streaming.base.partition.orig import get_partitions_orig

    samples, per_rank = 64, 4
    one = get_partitions_orig(samples, 1, 1, 4, 1, per_rank)           # (nodes, ranks, workers, batches, batch)
    two = get_partitions_orig(samples, 1, 2, 2, 1, per_rank)
    for node in range(2):
        for local in range(2):
            x = rank_layout(_srun(node * 2 + local, node, local))
            assert np.array_equal(two[node, local], one[0, x.rank]), (node, local)


def test_launchers_variables():
    # deepspeed launcher (block RANK, LOCAL_SIZE), node 1 of 2, local rank 1
    x = rank_layout(dict(RANK="3", WORLD_SIZE="4", LOCAL_RANK="1", LOCAL_SIZE="2"))
    assert (x.node, x.local_rank, x.rank, x.block_rank) == (1, 1, 3, 3)
    x = rank_layout(dict(RANK="2", WORLD_SIZE="4", LOCAL_RANK="0", LOCAL_SIZE="2"))
    assert (x.node, x.rank) == (1, 1)
    # torchrun names the node (GROUP_RANK)
    x = rank_layout(dict(RANK="1", WORLD_SIZE="4", LOCAL_RANK="1", LOCAL_WORLD_SIZE="2", GROUP_RANK="0"))
    assert (x.node, x.rank) == (0, 2)
    # one node: the launcher's numbering unchanged
    assert [rank_layout(dict(RANK=str(r), WORLD_SIZE="4", LOCAL_RANK=str(r), LOCAL_SIZE="4")).rank
            for r in range(4)] == [0, 1, 2, 3]
    # RANK wins over srun's variables (the deepspeed launcher inside an sbatch job with --ntasks=2)
    assert rank_layout(dict(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", **_srun(0, 0, 0, 2, "2"))).rank == 1
    assert rank_layout({}) is None and rank_layout(dict(SLURM_NTASKS="1")) is None


def test_uneven_nodes_are_refused():
    with pytest.raises(ValueError, match="every node must run the same number"):
        rank_layout(_srun(2, 1, 0, ntasks=3, layout="2,1"))


def test_slurm_local_world_size_reads_the_step_layout():
    assert slurm_local_world_size(dict(SLURM_STEP_TASKS_PER_NODE="2(x3),1", SLURM_NODEID="3")) == 1
    assert slurm_local_world_size(dict(SLURM_STEP_TASKS_PER_NODE="2(x3),1", SLURM_NODEID="2")) == 2
    assert slurm_local_world_size(dict(SLURM_TASKS_PER_NODE="4", SLURM_NODEID="0")) == 4
    assert slurm_local_world_size(dict(SLURM_NTASKS_PER_NODE="8")) == 8


@pytest.fixture()
def world_of_one(monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    original = dist.new_group
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                            timeout=datetime.timedelta(seconds=7))
    try:
        yield
    finally:
        dist.new_group = original
        dist.destroy_process_group()


def _timeout(group) -> datetime.timedelta:
    return group._get_backend(torch.device("cpu")).options._timeout


def test_groups_made_without_a_timeout_get_the_runs(world_of_one):
    """DeepSpeed's data-parallel group is new_group(ranks): without this, 30 min on gloo whatever the run asked."""
    assert _timeout(dist.new_group([0])) == datetime.timedelta(minutes=30)  # torch's own default: the bug
    groups_inherit_timeout(datetime.timedelta(seconds=7))
    assert _timeout(dist.new_group([0])) == datetime.timedelta(seconds=7)
    assert _timeout(dist.new_group(ranks=[0])) == datetime.timedelta(seconds=7)
    assert _timeout(dist.new_group([0], timeout=datetime.timedelta(seconds=3))) == datetime.timedelta(seconds=3)
    groups_inherit_timeout(datetime.timedelta(seconds=9))  # installed twice: one wrapper, the latest timeout
    assert _timeout(dist.new_group([0])) == datetime.timedelta(seconds=9)


def test_lost_peer_recognises_gloo_and_store_failures():
    assert lost_peer(RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 15000ms for recv"))
    assert lost_peer(RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer [10.0.0.2]:1234"))
    assert not lost_peer(RuntimeError("CUDA out of memory"))
    assert not lost_peer(ValueError("Timed out waiting"))
    assert not lost_peer(RuntimeError("shard download timed out after 60 s"))  # not a collective's
