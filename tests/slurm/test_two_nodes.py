"""Multi-node, for real: slurm/ scripts on a two-node SLURM cluster on this machine (tests/slurm/two_nodes.py).

Each node has its own hostname, address, /dev/shm and node-local scratch; the repository and the
artifacts are the shared filesystem. Everything is submitted with sbatch as a user would:

* preprocess: the array's two groups run on different nodes; the merge equals the same array run on one;
* training (CPU ranks, gloo, srun): ``--nodes=2 --ntasks-per-node=2`` under ZeRO-2 and ZeRO-3 reads the
  data through a per-node streaming cache (``data.streams`` remote -> node-local ``local``) and gives the
  losses and sample ids of ``--nodes=1 --ntasks-per-node=4`` bit for bit; its checkpoint (files from
  both nodes) resumes on one node with 2 ranks (universal checkpoint);
* a node lost mid-run: the second node's job processes are frozen, its link cut, then killed. The
  ranks on the first node end on the collective timeout (``dist_timeout_s``), SLURM declares the
  node down (``SlurmdTimeout``) and requeues the job; the node comes back, the requeued job resumes
  from the last complete checkpoint and its losses equal the uninterrupted run's.

Requires root (namespaces, the daemons); skipped otherwise. `pytest -m "not slurm"` leaves it out.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from two_nodes import TwoNodeCluster, pids_in

from cli_utils import step_losses
from cluster import ClusterUnavailable, Site, ensure_installed, fresh_checkout

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(1200)]

PYTHON = sys.executable
SLURMD_TIMEOUT = 20   # s: how long the controller waits for a silent node before it declares it down
DIST_TIMEOUT = 15     # s: dist_timeout_s of the runs
STEPS, CKPT = 40, 10  # ZeRO-2 runs: the node is lost after step CKPT + 4
Z3_STEPS = 12
TWO_NODES = ["--nodes=2", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--mem=3G", "--time=20"]
ONE_NODE = ["--nodes=1", "--ntasks-per-node=4", "--gpus-per-node=0", "--cpus-per-task=1", "--mem=6G", "--time=20"]


def _sample_ids(run_dir: Path) -> dict[int, list]:
    """rank -> the sample ids it trained on, step by step."""
    return {int(f.stem.rsplit("rank", 1)[1]): [json.loads(line) for line in f.read_text().splitlines()]
            for f in sorted(run_dir.glob("sample_ids_rank*.jsonl"))}


def _ranks(pids: list[int]) -> list[int]:
    """The training ranks among ``pids`` (python running pipeline/train.py; not srun, whose command names it)."""
    out = []
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"python" in Path(argv[0].decode()).name.encode() and b"pipeline/train.py" in argv:
            out.append(pid)
    return out


def _metrics_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum('"train/loss"' in line for line in path.read_text().splitlines())


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the two-node cluster needs root (namespaces, veth links, the SLURM daemons)")
    root = tmp_path_factory.mktemp("slurm2")
    try:
        ensure_installed(log=root / "apt.log")
    except ClusterUnavailable as exc:
        pytest.skip(str(exc))
    c = TwoNodeCluster(root / "cluster", slurmd_timeout=SLURMD_TIMEOUT)
    namespaces = set()
    try:
        c.start()
        namespaces = c.namespaces()
        yield c
    finally:
        c.stop()
        # Torn down: no process left in any of its namespaces (the kernel frees them with their last one).
        deadline = time.time() + 10
        while pids_in(namespaces) and time.time() < deadline:
            time.sleep(0.2)
        assert not pids_in(namespaces), f"processes left in the cluster's namespaces: {pids_in(namespaces)}"


@pytest.fixture(scope="module")
def site(cluster, tmp_path_factory, corpora) -> Site:
    return Site(cluster, fresh_checkout(tmp_path_factory.mktemp("site2"), corpora))


@pytest.fixture(scope="module")
def preprocessed(site, corpora) -> dict:
    """slurm/preprocess.sh, 2 groups of a whole node each: once free to use both nodes, once pinned to sdn1."""
    common = dict(INPUT=corpora / "lm1b_sample" / "train.txt", TEST_INPUT=corpora / "lm1b_sample" / "test.txt",
                  MODE="lm1b", SEQ_LEN=32, VALID_FRACTION=0.05, NUM_SHARDS=2, WORKERS=1)
    t0 = time.time()
    out = {}
    for name, extra in (("two", ""), ("one", " --nodelist=sdn1")):
        # From the login node (bash, not sbatch): SBATCH_ARGS reach the array and the merge job; a group
        # asks for a whole node (4 CPUs), so the two groups can run at once only on different nodes.
        proc = site.bash("slurm/preprocess.sh", OUT=f"artifacts/lm1b_{name}",
                         SBATCH_ARGS="--cpus-per-task=4 --mem=2G --time=20" + extra, **common)
        m = re.search(r"submitted group array (\d+) \(2 groups\) and merge job (\d+)", proc.stdout)
        assert proc.returncode == 0 and m, proc.stdout + proc.stderr
        array_id, merge_id = m.groups()
        out[name] = dict(dir=site.checkout / f"artifacts/lm1b_{name}", array_id=array_id,
                         array=site.wait_ok(array_id, "semdlm-preprocess", 300),
                         merge=site.wait_ok(merge_id, "semdlm-preprocess-merge", 300)[0])
    print(f"\npreprocess on two nodes and on one: {time.time() - t0:.0f} s")
    return out


def _config(site: Site, artifact: Path, **overrides) -> str:
    """A training config reading ``artifact`` through a per-node streaming cache (cluster.local is node-local)."""
    cfg = yaml.safe_load((site.checkout / "configs/tiny.yaml").read_text())
    cfg.update(kernel="mask", global_batch=16, micro_batch=4, lr=3e-3, warmup_steps=2, val_every=0, log_every=1,
               ema_decay=0.9, log_sample_ids=True, dist_timeout_s=DIST_TIMEOUT, keep_last=3, **overrides)
    cfg["data"] = {"streams": [{"name": "lm1b", "remote": str(artifact),
                                "local": str(site.cluster.local / "cache" / "lm1b")}]}
    path = site.checkout / "configs" / f"two_nodes_{overrides['max_steps']}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path.relative_to(site.checkout))


def _train(site: Site, options: list[str], run_dir: str, config: str, ds_config: str = "ds_configs/zero2.json",
           extra: str = "") -> str:
    return site.sbatch("slurm/train.sh", options, CONFIG=config, DS_CONFIG=ds_config, DATA="", NEIGHBORS="",
                       RUN_DIR=run_dir, EXTRA_ARGS=extra)


@pytest.fixture(scope="module")
def zero2_runs(site, preprocessed) -> dict:
    """ZeRO-2, STEPS steps: on two nodes x 2 ranks (watching each node's /dev/shm and cache), and on one node x 4."""
    config = _config(site, preprocessed["two"]["dir"], max_steps=STEPS, ckpt_every=CKPT)
    t0 = time.time()
    two = _train(site, TWO_NODES, "runs/z2_two", config)
    shm, cached = {}, {}
    while site.cluster.job_records(two)[0].get("JobState") in ("PENDING", "CONFIGURING", "RUNNING"):
        if _metrics_steps(site.checkout / "runs/z2_two") >= 2 and not shm:
            for node in site.cluster.nodes:
                listing = subprocess.run([*site.cluster.enter(node), "ls", "/dev/shm", str(site.cluster.local)],
                                         capture_output=True, text=True, timeout=30).stdout
                shm[node] = listing
            cached = {n: sorted(p.name for p in (site.cluster.root / "nodes" / n / "local" / "cache" / "lm1b" /
                                                 "train").glob("*")) for n in site.cluster.nodes}
        time.sleep(0.2)
    two_record = site.wait_ok(two, "semdlm-train", 60)[0]
    two_s = time.time() - t0
    t0 = time.time()
    one = _train(site, ONE_NODE, "runs/z2_one", config)
    one_record = site.wait_ok(one, "semdlm-train", 600)[0]
    print(f"\nZeRO-2 {STEPS} steps: two nodes {two_s:.0f} s, one node {time.time() - t0:.0f} s")
    return dict(config=config, two=site.checkout / "runs/z2_two", one=site.checkout / "runs/z2_one",
                two_record=two_record, one_record=one_record, shm=shm, cached=cached,
                log=site.log(two, "semdlm-train"))


@pytest.fixture(scope="module")
def zero3_runs(site, preprocessed) -> dict:
    config = _config(site, preprocessed["two"]["dir"], max_steps=Z3_STEPS, ckpt_every=Z3_STEPS)
    t0 = time.time()
    runs = {}
    for name, options in (("two", TWO_NODES), ("one", ONE_NODE)):
        job = _train(site, options, f"runs/z3_{name}", config, ds_config="ds_configs/zero3.json")
        runs[name] = site.checkout / f"runs/z3_{name}"
        runs[f"{name}_record"] = site.wait_ok(job, "semdlm-train", 600)[0]
    print(f"\nZeRO-3 {Z3_STEPS} steps on two nodes and on one: {time.time() - t0:.0f} s")
    return runs


# --------------------------------------------------------------------------- tests
def test_preprocess_groups_run_on_both_nodes_and_merge_like_one_node(site, preprocessed):
    two, one = preprocessed["two"], preprocessed["one"]
    nodes = {r["NodeList"] for r in two["array"]}
    assert nodes == {"sdn1", "sdn2"}, f"the two groups did not spread over the nodes: {nodes}"
    assert {r["NodeList"] for r in one["array"]} == {"sdn1"}
    # The same artifact: every shard, index and count file byte for byte (manifests differ in time and host).
    files = sorted(p.relative_to(one["dir"]) for p in one["dir"].rglob("*")
                   if p.is_file() and p.name != "manifest.json")
    assert files and files == sorted(p.relative_to(two["dir"]) for p in two["dir"].rglob("*")
                                     if p.is_file() and p.name != "manifest.json")
    different = [str(f) for f in files if (one["dir"] / f).read_bytes() != (two["dir"] / f).read_bytes()]
    assert not different, f"the two-node artifact differs from the one-node one in {different}"
    proc = subprocess.run([PYTHON, "-m", "preprocess", "verify", str(two["dir"])], cwd=site.checkout, env=site.env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_zero2_on_two_nodes_equals_one_node_bit_for_bit(zero2_runs):
    r = zero2_runs
    assert r["two_record"]["NodeList"] == "sdn[1-2]" and r["one_record"]["NodeList"] in ("sdn1", "sdn2")
    assert "2 node(s) x 2 ranks" in r["log"] and "world 4 x micro 4 x accum 1 = 16" in r["log"]
    two, one = step_losses(r["two"]), step_losses(r["one"])
    assert sorted(two) == list(range(1, STEPS + 1))
    assert two == one, f"losses differ at steps {[s for s in two if two[s] != one.get(s)][:10]}"
    assert _sample_ids(r["two"]) == _sample_ids(r["one"]) and len(_sample_ids(r["two"])) == 4
    # Checkpoints: every rank's files, written from both hosts, in the one shared run directory.
    final = r["two"] / "checkpoints" / f"global_step{STEPS}"
    for rank in range(4):
        assert (final / f"rank_state_{rank}.pt").is_file() and \
            (final / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").is_file()
    # Per node: streaming's shared memory in each node's own /dev/shm, the shards in each node's own cache.
    for node, listing in r["shm"].items():
        assert any(name.endswith(("_locals", "_barrier", "_filelock")) or "_" in name
                   for name in listing.split()), f"no streaming shared memory on {node}: {listing}"
    assert r["cached"]["sdn1"] and r["cached"]["sdn1"] == r["cached"]["sdn2"], r["cached"]


def test_zero3_on_two_nodes_equals_one_node_bit_for_bit(zero3_runs):
    two, one = step_losses(zero3_runs["two"]), step_losses(zero3_runs["one"])
    assert zero3_runs["two_record"]["NodeList"] == "sdn[1-2]"
    assert sorted(two) == list(range(1, Z3_STEPS + 1))
    assert two == one, f"losses differ at steps {[s for s in two if two[s] != one.get(s)][:10]}"
    assert _sample_ids(zero3_runs["two"]) == _sample_ids(zero3_runs["one"])


def test_two_node_checkpoint_resumes_on_one_node_with_two_ranks(site, zero2_runs):
    import shutil

    run_dir = site.checkout / "runs/z2_universal"
    shutil.copytree(zero2_runs["two"], run_dir)
    ckpts = run_dir / "checkpoints"
    proc = subprocess.run([PYTHON, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                           str(ckpts / f"global_step{STEPS}"), "--output_folder",
                           str(ckpts / f"global_step{STEPS}_universal")], cwd=site.checkout, env=site.env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (ckpts / "latest_universal").write_text(f"global_step{STEPS}_universal")
    job = _train(site, ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--mem=4G"],
                 "runs/z2_universal", zero2_runs["config"], extra=f"max_steps={STEPS + 4} --universal")
    site.wait_ok(job, "semdlm-train", 600)
    log = site.log(job, "semdlm-train")
    assert f"resumed from global_step{STEPS}_universal (step {STEPS}" in log, log[-3000:]
    assert "world 2 x micro 4 x accum 2 = 16" in log
    losses = step_losses(run_dir)
    assert set(range(STEPS + 1, STEPS + 5)) <= set(losses)
    assert abs(losses[STEPS + 1] - losses[STEPS]) < 0.5, "a fresh model, not the resumed one"


def test_lost_node_times_out_requeues_and_resumes_exactly(site, zero2_runs):
    cluster, run_dir = site.cluster, site.checkout / "runs/z2_lost"
    job = _train(site, TWO_NODES, "runs/z2_lost", zero2_runs["config"])
    deadline = time.time() + 300
    while _metrics_steps(run_dir) < CKPT + 4:
        assert time.time() < deadline and cluster.job_records(job)[0]["JobState"] in ("PENDING", "RUNNING")
        time.sleep(0.05)
    killed = cluster.fail_node("sdn2")
    t_kill = time.time()
    survivors, ranks_gone, requeued = None, None, None
    while requeued is None:
        assert time.time() - t_kill < 180, f"the job did not end within 180 s: {cluster.job_records(job)}"
        ranks = _ranks(cluster.job_pids("sdn1")) if ranks_gone is None else []
        survivors = len(ranks) if survivors is None else survivors
        if ranks_gone is None and not ranks:
            ranks_gone = time.time() - t_kill
        record = cluster.job_records(job)[0]
        if int(record.get("Restarts", 0)) >= 1:
            requeued = time.time() - t_kill
        time.sleep(0.2)
    assert survivors == 2 and ranks_gone is not None and ranks_gone < DIST_TIMEOUT + 15, (survivors, ranks_gone)
    log = site.log(job, "semdlm-train")
    assert log.count("a collective lost its peers") == 2, log[-4000:]
    assert "DUE TO NODE FAILURE" in log
    # The node comes back (rebooted); the requeued job runs on both nodes again and resumes.
    cluster.restore_node("sdn2")
    record = site.wait_ok(job, "semdlm-train", 600)[0]
    log = site.log(job, "semdlm-train")
    print(f"\nnode lost after step {CKPT + 4} ({len(killed)} processes on sdn2): the ranks on sdn1 ended "
          f"{ranks_gone:.1f} s after the kill (dist_timeout_s={DIST_TIMEOUT}), SLURM requeued the job after "
          f"{requeued:.1f} s (SlurmdTimeout={SLURMD_TIMEOUT}); finished {time.time() - t_kill:.0f} s after the kill")
    assert record["NodeList"] == "sdn[1-2]" and int(record["Restarts"]) == 1
    assert f"resumed from global_step{CKPT}" in log or f"resumed from global_step{2 * CKPT}" in log, log[-4000:]
    ref, ours = step_losses(zero2_runs["two"]), step_losses(run_dir)
    assert sorted(ours) == sorted(ref) == list(range(1, STEPS + 1))
    assert ours == ref, f"losses differ from the uninterrupted run at {[s for s in ref if ref[s] != ours[s]][:10]}"
    assert np.isfinite(list(ours.values())).all()
