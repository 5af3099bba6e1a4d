"""The scripts in slurm/, submitted with sbatch to a real one-node SLURM cluster (tests/slurm/cluster.py).

Everything runs as a new user would run it: from a copy of the repository's tracked files (a fresh
clone: logs/ is whatever git ships), with sbatch options on the command line, CPU only. The stages
use the shared LM1B sample at seq_len 32 and the tiny model. The training test lets the real
time-limit warning (--signal=B:USR1@...) interrupt the first run of the job; slurm/train.sh
checkpoints, requeues the job, the requeued run resumes, and its losses must equal those of an
uninterrupted run (LAUNCH=deepspeed) bit for bit.

Requires root (to install Debian's SLURM when it is missing and to run the daemons); skipped
otherwise. `pytest -m "not slurm"` leaves it out.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import yaml

from cli_utils import step_losses
from cluster import Cluster, ClusterUnavailable, Site, ensure_installed, fresh_checkout

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
TRAIN_STEPS = 300  # long enough (>= 45 s) that the first run is still training when the warning comes
TRAIN_OVERRIDES = f"max_steps={TRAIN_STEPS} lr=3e-3 warmup_steps=2 val_every=0 log_every=1 ema_decay=0.9 " \
                  "ckpt_every=100000 kernel_args.k_max=8"
CPU_TRAIN = ["--nodes=1", "--gpus-per-node=0", "--ntasks-per-node=2", "--cpus-per-task=1", "--mem=6G"]
CPU_ONE = ["--gpus-per-node=0", "--cpus-per-task=1", "--mem=4G"]


# --------------------------------------------------------------------------- helpers
def _stamp(line: str) -> float:
    return datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S").timestamp()


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm")
    try:
        ensure_installed(log=root / "apt.log")
    except ClusterUnavailable as exc:
        pytest.skip(str(exc))
    c = Cluster(root / "cluster")
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def site(cluster, tmp_path_factory, corpora) -> Site:
    """The repository's tracked (and unignored new) files, copied like a fresh clone; ../shared next to it."""
    return Site(cluster, fresh_checkout(tmp_path_factory.mktemp("site"), corpora))


@pytest.fixture(scope="module")
def preprocess_jobs(site, corpora):
    """slurm/preprocess.sh twice: 2 groups + merge (as a user would, options on the sbatch line), and 1 group."""
    common = dict(INPUT=corpora / "lm1b_sample" / "train.txt", TEST_INPUT=corpora / "lm1b_sample" / "test.txt",
                  MODE="lm1b", SEQ_LEN=32, VALID_FRACTION=0.05)
    t0 = time.time()
    launcher = site.sbatch("slurm/preprocess.sh", ["--cpus-per-task=1", "--mem=2G", "--time=20"],
                           OUT="artifacts/lm1b", NUM_SHARDS=2, **common)
    single = site.sbatch("slurm/preprocess.sh", ["--cpus-per-task=1", "--mem=2G"],
                         OUT="artifacts/lm1b_one", NUM_SHARDS=1, **common)
    site.wait_ok(launcher, "semdlm-preprocess", 120)
    launcher_log = site.log(launcher, "semdlm-preprocess")
    m = re.search(r"submitted group array (\d+) \(2 groups\) and merge job (\d+)", launcher_log)
    assert m, launcher_log
    array_id, merge_id = m.groups()
    array = site.wait_ok(array_id, "semdlm-preprocess", 300)
    merge = site.wait_ok(merge_id, "semdlm-preprocess-merge", 120)
    site.wait_ok(single, "semdlm-preprocess", 300)
    print(f"\npreprocess (2 groups + merge, and 1 group): {time.time() - t0:.0f} s")
    return dict(array=array, merge=merge[0], merged=site.checkout / "artifacts/lm1b",
                single=site.checkout / "artifacts/lm1b_one", array_id=array_id)


@pytest.fixture(scope="module")
def neighbors(site, preprocess_jobs) -> Path:
    t0 = time.time()
    job = site.sbatch("slurm/neighbors.sh", ["--cpus-per-task=2", "--mem=6G"],
                      PREPROCESSED="artifacts/lm1b", OUT="artifacts/nn", K_MAX=8)
    site.wait_ok(job, "semdlm-neighbors", 600)
    print(f"\nneighbors: {time.time() - t0:.0f} s")
    return site.checkout / "artifacts/nn"


@pytest.fixture(scope="module")
def reference_run(site, neighbors) -> dict:
    """The uninterrupted run: LAUNCH=deepspeed (the DeepSpeed launcher on one node), a long time limit."""
    t0 = time.time()
    job = site.sbatch("slurm/train.sh", [*CPU_TRAIN, "--time=30"], LAUNCH="deepspeed", CONFIG="configs/tiny.yaml",
                      DATA="artifacts/lm1b", NEIGHBORS="artifacts/nn", KERNEL="semdlm_plus", RUN_DIR="runs/reference",
                      EXTRA_ARGS=TRAIN_OVERRIDES)
    record = site.wait_ok(job, "semdlm-train", 900)[0]
    log = site.log(job, "semdlm-train")
    assert record["Restarts"] == "0", log[-4000:]
    h, m, s = map(int, record["RunTime"].split(":"))
    run_dir = site.checkout / "runs/reference"
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    step_time = float(np.median([r["perf/step_time_s"] for r in steps if "perf/step_time_s" in r]))
    runtime = 3600 * h + 60 * m + s
    print(f"\nreference training run (LAUNCH=deepspeed): {time.time() - t0:.0f} s, job run time {runtime} s, "
          f"{step_time:.3f} s/step")
    return dict(job=job, run_dir=run_dir, runtime=runtime, startup=runtime - TRAIN_STEPS * step_time, log=log)


@pytest.fixture(scope="module")
def requeued_run(site, reference_run) -> dict:
    """slurm/train.sh (srun, 2 ranks, gloo) with a time limit whose USR1 warning comes while it trains.

    SLURM checks time limits every 30 s, so the warning comes up to ~30 s after it is due. It is
    made due `due` seconds after the start - 5 s after the reference run's start-up, and at least
    45 s before that run's end -, so that the run is still training when it arrives. Once the job
    has been requeued, the test (as the cluster's admin) gives it a 15-minute limit, so the
    requeued run finishes instead of being warned again (each requeue costs a start-up; the script
    handles any number of them).
    """
    due = int(max(8, min(reference_run["startup"] + 5, reference_run["runtime"] - 45)))
    limit_s = 60 * max(3, -(-(due + 90) // 60))  # whole minutes, >= 90 s after the warning is due
    t0 = time.time()
    job = site.sbatch("slurm/train.sh", [*CPU_TRAIN, f"--time={limit_s // 60}", f"--signal=B:USR1@{limit_s - due}"],
                      CONFIG="configs/tiny.yaml", DATA="artifacts/lm1b", NEIGHBORS="artifacts/nn",
                      KERNEL="semdlm_plus", RUN_DIR="runs/requeued", EXTRA_ARGS=TRAIN_OVERRIDES)
    deadline = time.time() + 600
    extended = False
    while time.time() < deadline:
        record = site.cluster.job_records(job)[0]
        if int(record.get("Restarts", 0)) >= 1 and not extended:
            site.cluster.scontrol("update", f"jobid={job}", "TimeLimit=15")
            extended = True
        if record.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            break
        time.sleep(0.5)
    record = site.wait_ok(job, "semdlm-train", 900)[0]
    log = site.log(job, "semdlm-train")
    print(f"\nrequeued training job: {time.time() - t0:.0f} s (warning due {due} s after the start)")
    return dict(job=job, record=record, log=log, run_dir=site.checkout / "runs/requeued")


# --------------------------------------------------------------------------- tests
def test_cluster_runs_array_jobs(site):
    """The fixture's cluster itself: an array of 2 tasks on the idle node."""
    job = site.sbatch("--wrap=true", ["--array=0-1", "--mem=100M", "--output=/dev/null"])
    records = site.cluster.wait(job, 60)[job]
    assert sorted(r["JobState"] for r in records) == ["COMPLETED", "COMPLETED"]


def test_preprocess_array_and_merge_equal_the_one_node_run(site, preprocess_jobs):
    from streaming import StreamingDataset

    merged, single = preprocess_jobs["merged"], preprocess_jobs["single"]
    # The sbatch options reached the array tasks and the merge job (the script asks for 16 CPUs, 32G, 4 h).
    array = preprocess_jobs["array"]
    assert len(array) == 2 and {r["ArrayTaskId"] for r in array} == {"0", "1"}
    for r in array:
        assert (r["NumCPUs"], r["MinMemoryNode"], r["TimeLimit"]) == ("1", "2G", "00:20:00"), r
    merge = preprocess_jobs["merge"]
    assert (merge["NumCPUs"], merge["MinMemoryNode"], merge["TimeLimit"]) == ("1", "2G", "00:20:00"), merge
    assert merge["JobName"] == "semdlm-preprocess-merge"
    logs = site.checkout / "logs"
    assert (logs / f"semdlm-preprocess-{preprocess_jobs['array_id']}_0.out").is_file()
    assert (logs / f"semdlm-preprocess-{preprocess_jobs['array_id']}_1.out").is_file()
    assert "merged 2 groups" in (logs / f"semdlm-preprocess-merge-{merge['JobId']}.out").read_text()
    assert (merged.parent / "lm1b.groups" / "group-00001-of-00002" / "manifest.json").is_file()

    # Same tokens and counts as one node: unigram counts byte for byte, every split the same rows.
    assert (merged / "unigram_counts.npy").read_bytes() == (single / "unigram_counts.npy").read_bytes()
    m_stats = json.loads((merged / "stats.json").read_text())
    s_stats = json.loads((single / "stats.json").read_text())
    assert m_stats == s_stats
    def rows(directory: Path) -> list[bytes]:
        ds = StreamingDataset(local=str(directory), shuffle=False, batch_size=1, predownload=None)
        out = [np.asarray(ds[i]["tokens"]).tobytes() for i in range(len(ds))]
        del ds
        return out

    for split in ("train", "validation", "test"):
        ours, theirs = rows(merged / split), rows(single / split)
        assert len(ours) == s_stats[split]["sequences"] > 0
        # Groups take every 2nd input line; the merged split holds group 0's rows, then group 1's:
        # the one-node run's rows byte for byte, in another order.
        assert sorted(ours) == sorted(theirs), f"{split}: merged rows differ from the one-node run"
    # The test split (its own input, no hash routing, one line -> one row) shows the exact order.
    ours, theirs = rows(merged / "test"), rows(single / "test")
    assert ours == theirs[0::2] + theirs[1::2]
    proc = subprocess.run([PYTHON, "-m", "preprocess", "verify", str(merged)], cwd=site.checkout, env=site.env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_neighbors_job_builds_the_tables(neighbors, preprocess_jobs):
    manifest = json.loads((neighbors / "manifest.json").read_text())
    assert manifest["stage"] == "neighbor_index"
    table = np.load(neighbors / "neighbors.npy")
    vocab = json.loads((preprocess_jobs["merged"] / "manifest.json").read_text())["tokenizer"]["vocab_size"]
    assert table.shape == (vocab, 8)
    valid = np.load(neighbors / "valid_vocab.npy")
    assert (table[valid] != np.flatnonzero(valid)[:, None]).all(), "a token is its own neighbour"


def test_train_job_checkpoints_requeues_and_resumes_exactly(requeued_run, reference_run):
    log, record = requeued_run["log"], requeued_run["record"]
    run_dir = requeued_run["run_dir"]
    assert int(record["Restarts"]) >= 1, f"the job was never requeued:\n{log[-4000:]}"
    assert "time limit approaching" in log and "requeueing job" in log
    assert re.search(r"resumed from global_step\d+", log), log[-4000:]
    stops = [int(s) for s in re.findall(r"checkpointed at step (\d+), exiting for requeue", log)]
    assert stops and all(0 < s < TRAIN_STEPS for s in stops), log[-4000:]
    # It stopped requeueing once the run had finished.
    assert (run_dir / "finished.json").is_file()
    assert "training finished" in log.rstrip().splitlines()[-1], log[-2000:]
    assert int(record["Restarts"]) == log.count("checkpointed before the time limit; requeueing")
    # Requeue delay: from the requeue to the next run's first line.
    lines = log.splitlines()
    requeue_at = [_stamp(line) for line in lines if "requeueing job" in line]
    restart_at = [_stamp(line) for line in lines if re.search(r": job \d+ \(restart [1-9]", line)]
    print(f"\nrequeue -> restart: {', '.join(f'{b - a:.0f} s' for a, b in zip(requeue_at, restart_at))}; "
          f"stopped at steps {stops}")

    ref, ours = step_losses(reference_run["run_dir"]), step_losses(run_dir)
    assert sorted(ref) == sorted(ours) == list(range(1, TRAIN_STEPS + 1))
    different = [s for s in ref if ref[s] != ours[s]]
    assert not different, f"losses differ from the uninterrupted run at steps {different[:10]}: " \
                          f"{[(ref[s], ours[s]) for s in different[:3]]}"


def test_reference_run_used_the_deepspeed_launcher(reference_run):
    log = reference_run["log"]
    assert "LAUNCH=deepspeed" in log and "launch.py" in log, log[-3000:]
    assert "training finished" in log


def test_export_sample_and_eval_jobs(site, requeued_run):
    t0 = time.time()
    export = site.sbatch("slurm/export.sh", ["--cpus-per-task=1", "--mem=4G"], RUN_DIR="runs/requeued",
                         OUT="exports/requeued")
    sample = site.sbatch("slurm/sample.sh", [*CPU_ONE, f"--dependency=afterok:{export}"], MODEL="exports/requeued",
                         OUT="artifacts/samples", STEPS=8, NUM_SAMPLES=4, BATCH_SIZE=4)
    evaluate = site.sbatch("slurm/eval.sh", [*CPU_ONE, f"--dependency=afterok:{export}"], MODEL="exports/requeued",
                           OUT="artifacts/eval", JUDGE="none", STEPS=8, NUM_SAMPLES=4, BATCH_SIZE=4, MAX_TEST=16,
                           T_DRAWS=1)
    site.wait_ok(export, "semdlm-export", 300)
    site.wait_ok(sample, "semdlm-sample", 300)
    site.wait_ok(evaluate, "semdlm-eval", 300)
    print(f"\nexport + sample + eval jobs: {time.time() - t0:.0f} s")
    config = json.loads((site.checkout / "exports/requeued/config.json").read_text())
    assert config["training"]["step"] == TRAIN_STEPS
    samples = [json.loads(line)
               for line in (site.checkout / "artifacts/samples/samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and all(len(s["ids"]) == 32 for s in samples)
    results = json.loads((site.checkout / "artifacts/eval/results.json").read_text())
    assert results["kernel"] == "semdlm_plus" and results["nelbo"]["sequences"] == 16
    assert np.isfinite(results["nelbo"]["nats_per_token"]) and results["nelbo"]["nats_per_token"] > 0
    assert [(r["steps"], len(r["entropy_per_sample"])) for r in results["sweep"]] == [(8, 4)]
    assert (site.checkout / "artifacts/eval/report.md").is_file()


def test_pipeline_script_chains_every_stage(site, corpora, neighbors):
    """slurm/pipeline.sh: one command submits all stages, each waiting for the one before (afterok).

    Preprocess and neighbors point at the artifacts built above (their jobs run and find them up
    to date); training, export, sampling and evaluation do real work in new directories. The
    training job's batch shell gets USR1 (what the time-limit warning sends) as soon as it starts,
    while the ranks are still starting up and before the trainer deletes a STOP file it finds:
    the request must not be lost, the job requeues once, and the export waits for the requeued run.
    """
    t0 = time.time()
    proc = site.bash("slurm/pipeline.sh", ["--mem=4G", "--time=15"],
                     INPUT=corpora / "lm1b_sample" / "train.txt", TEST_INPUT=corpora / "lm1b_sample" / "test.txt",
                     MODE="lm1b", SEQ_LEN=32, VALID_FRACTION=0.05, NUM_SHARDS=2, K_MAX=8,
                     PREPROCESSED="artifacts/lm1b", NEIGHBORS="artifacts/nn", RUN_DIR="runs/pipeline",
                     EXPORT="exports/pipeline", SAMPLES_OUT="artifacts/pipeline_samples",
                     EVAL_OUT="artifacts/pipeline_eval", CONFIG="configs/tiny.yaml", KERNEL="semdlm_plus",
                     TRAIN_ARGS="max_steps=30 val_every=0 log_every=1 ckpt_every=100000 kernel_args.k_max=8",
                     PREPROCESS_SBATCH="--cpus-per-task=1", NEIGHBORS_SBATCH="--cpus-per-task=2",
                     TRAIN_SBATCH=" ".join(CPU_TRAIN), EXPORT_SBATCH="--cpus-per-task=1",
                     SAMPLE_SBATCH=" ".join(CPU_ONE), EVAL_SBATCH=" ".join(CPU_ONE),
                     STEPS=8, NUM_SAMPLES=4, BATCH_SIZE=4, JUDGE="none", MAX_TEST=16, T_DRAWS=1)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = dict(re.findall(r"^(\w+): job (\d+)", proc.stdout, flags=re.M))
    assert list(jobs) == ["preprocess", "neighbors", "train", "export", "sample", "eval"], proc.stdout
    # Each job waits for the one before it.
    order = list(jobs.values())
    for before, after in zip(order, order[1:]):
        dep = site.cluster.job_records(after)[0]["Dependency"]
        assert dep == "(null)" or before in dep, (before, after, dep)
    train_log = site.checkout / "logs" / f"semdlm-train-{jobs['train']}.out"
    deadline = time.time() + 400
    while time.time() < deadline and not (train_log.exists() and "(restart 0)" in train_log.read_text()):
        assert site.cluster.job_records(jobs["train"])[0]["JobState"] in ("PENDING", "RUNNING"), proc.stdout
        time.sleep(0.2)
    site.cluster._run(["scancel", "--signal=USR1", "--batch", jobs["train"]])
    names = {"preprocess": "semdlm-preprocess-merge", "neighbors": "semdlm-neighbors", "train": "semdlm-train",
             "export": "semdlm-export", "sample": "semdlm-sample", "eval": "semdlm-eval"}
    records = {stage: site.wait_ok(job, names[stage], 600)[0] for stage, job in jobs.items()}
    print(f"\npipeline.sh (6 stages): {time.time() - t0:.0f} s")
    for before, after in zip(list(records), list(records)[1:]):
        assert records[after]["StartTime"] >= records[before]["EndTime"], (before, after)
    assert "up to date" in site.log(jobs["neighbors"], "semdlm-neighbors")
    assert (site.checkout / "runs/pipeline/finished.json").is_file()
    log = site.log(jobs["train"], "semdlm-train")
    assert records["train"]["Restarts"] == "1", log[-4000:]
    stopped = [int(s) for s in re.findall(r"checkpointed at step (\d+), exiting for requeue", log)]
    assert len(stopped) == 1 and 1 <= stopped[0] < 30 and f"resumed from global_step{stopped[0]}" in log, log[-4000:]
    assert sorted(step_losses(site.checkout / "runs/pipeline")) == list(range(1, 31))
    assert json.loads((site.checkout / "exports/pipeline/config.json").read_text())["training"]["step"] == 30
    assert len((site.checkout / "artifacts/pipeline_samples/samples.jsonl").read_text().splitlines()) == 4
    assert (site.checkout / "artifacts/pipeline_eval/report.md").is_file()
    # Every job got the options given to pipeline.sh (stage options come after them and win).
    assert all(r["TimeLimit"] == "00:15:00" for r in records.values()), records
    assert [records[s]["MinMemoryNode"] for s in ("preprocess", "neighbors", "export")] == ["4G"] * 3
    assert records["train"]["NumCPUs"] == "2" and records["train"]["MinMemoryNode"] == "6G"


def test_pipeline_script_refuses_bad_input(site):
    proc = site.bash("slurm/pipeline.sh", STAGES="preprocess typo")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "slurm/pipeline.sh: error: unknown stage 'typo' in STAGES "
        "(known: preprocess neighbors train export sample eval)"]
    proc = site.bash("slurm/preprocess.sh", NUM_SHARDS=0)
    assert proc.returncode == 2 and "NUM_SHARDS must be >= 1" in proc.stderr


def test_study_submitted_with_slurm_runs_every_cell_and_reports(site, neighbors):
    """python -m pipeline.study SPEC --slurm: the smoke study on the artifacts above, one job per cell.

    Every cell's job runs once its dependencies' jobs succeeded and stamps the cell, the report job
    writes the report once every job has ended, and the study then sees every cell cached.
    """
    from pipeline.studies.plan import build_plan
    from pipeline.studies.spec import parse_spec

    raw = yaml.safe_load((site.checkout / "configs/study/smoke.yaml").read_text())
    raw["data"] = {"preprocessed": "artifacts/lm1b", "neighbors": "artifacts/nn", "seq_len": 32}
    (site.checkout / "study.yaml").write_text(yaml.safe_dump(raw))

    def study(*args) -> subprocess.CompletedProcess:
        return subprocess.run([PYTHON, "-m", "pipeline.study", "study.yaml", "--out", "studies/smoke", *args],
                              cwd=site.checkout, env=site.env, capture_output=True, text=True, timeout=300)

    t0 = time.time()
    proc = study("--slurm", "--sbatch", " ".join(CPU_ONE))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    jobs = dict(re.findall(r"^(\S+): job (\d+)", proc.stdout, flags=re.M))
    plan = build_plan(parse_spec(raw), Path("studies/smoke"))
    assert list(jobs) == [c.name for c in plan.ordered()] + ["report"], proc.stdout
    records = {name: site.cluster.wait(job, 900)[job][0] for name, job in jobs.items()}
    print(f"\nsmoke study with --slurm ({len(jobs)} jobs): {time.time() - t0:.0f} s")
    logs = site.checkout / "studies/smoke/logs"
    for name, r in records.items():
        log = logs / (name.replace("/", "__") + ".log")
        assert (r["JobState"], r["ExitCode"]) == ("COMPLETED", "0:0"), f"{name}: {r['JobState']}\n" + (
            log.read_text(errors="replace")[-4000:] if log.exists() else f"(no log {log})")
    for cell in plan.ordered():  # each job started after the jobs it needs had ended
        assert all(records[cell.name]["StartTime"] >= records[d]["EndTime"] for d in cell.deps), cell.name
    assert records["report"]["StartTime"] >= max(r["EndTime"] for n, r in records.items() if n != "report")
    assert "training finished" in (logs / "train__semdlm_plus-ca-s0.log").read_text()
    report = (site.checkout / "studies/smoke/report/report.md").read_text()
    for claim in ("(table2)", "(table3)", "(penalty)", "(convergence)"):
        assert claim in report, claim
    assert report.count("**holds**") + report.count("**does not hold**") + report.count("**inconclusive**") == 4
    dry = study("--dry-run")
    assert dry.returncode == 0 and dry.stdout.count(" cached ") == len(plan.cells), dry.stdout
    assert "to run: 0 cells" in dry.stdout, dry.stdout
