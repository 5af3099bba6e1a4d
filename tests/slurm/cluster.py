"""A real one-node SLURM cluster for the tests: munged, slurmctld and slurmd on localhost.

Debian's SLURM 22.05 (`slurmctld`, `slurmd`, `slurm-client`, `munge`) is installed with apt-get when
it is missing (root only). Everything the daemons write - munge key and socket, slurm.conf, state,
spool, logs - lives in one temporary directory; the daemons run in the foreground as children of the
test process (and die with it: PR_SET_PDEATHSIG), on free ports, so they cannot clash with a
system SLURM or with another test session. ``stop()`` cancels every job of the cluster and stops
exactly the three processes ``start()`` started. ``Site`` is the cluster plus a checkout to submit from.

Two settings differ from a production cluster, to keep the tests short:
  * ``AuthInfo=...,cred_expire=5``: a requeued job may start again once the job credential of its
    previous run has expired (default 120 s);
  * ``SchedulerParameters=bf_interval=1,sched_interval=2,...``: the scheduler looks at pending
    jobs every second or two instead of every 30/60 s.
"""
from __future__ import annotations

import ctypes
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun")
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE", "PREEMPTED", "SPECIAL_EXIT"}


class ClusterUnavailable(Exception):
    """This machine cannot run the cluster (the tests skip with this reason)."""


def _which(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for d in ("/usr/sbin", "/sbin", "/usr/bin")
                                       if (p := Path(d) / name).is_file()), None)


def missing_binaries() -> list[str]:
    return [n for n in (*DAEMONS, *CLIENTS) if _which(n) is None]


def ensure_installed(log: Path | None = None) -> None:
    """Install the Debian packages when a binary is missing; ClusterUnavailable if this cannot work here."""
    missing = missing_binaries()
    if not missing:
        return
    if os.geteuid() != 0:
        raise ClusterUnavailable(f"SLURM is not installed ({', '.join(missing)} missing) and installing it "
                                 f"needs root: apt-get install -y {' '.join(PACKAGES)}")
    if _which("apt-get") is None:
        raise ClusterUnavailable(f"SLURM is not installed ({', '.join(missing)} missing) and there is no apt-get "
                                 f"to install {' '.join(PACKAGES)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    out = open(log, "w") if log else subprocess.DEVNULL
    try:
        for cmd in (["apt-get", "update", "-q"],
                    ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]):
            proc = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=900)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed with status {proc.returncode} (log: {log})")
    finally:
        if log:
            out.close()
    if missing_binaries():
        raise RuntimeError(f"apt-get installed {' '.join(PACKAGES)} but {', '.join(missing_binaries())} "
                           "is still missing")


def _die_with_parent() -> None:
    """preexec_fn: the daemon gets SIGTERM when the test process dies, however it dies."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _mem_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


class Cluster:
    def __init__(self, root: Path, cpus: int | None = None, cred_expire: int = 5):
        self.root = Path(root)
        self.cpus = cpus or os.cpu_count() or 1
        self.mem_mb = int(_mem_mb() * 0.9)
        self.cred_expire = cred_expire
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.procs: dict[str, subprocess.Popen] = {}
        self.controller_addr = "127.0.0.1"
        self.prefix: list[str] = []  # what the clients run under (tests/slurm/two_nodes.py: the head's network)
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        for var in [v for v in self.env if v.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))]:
            if var != "SLURM_CONF":
                del self.env[var]

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 60) -> Cluster:
        r = self.root
        for d in ("munge", "state", "spool", "log"):
            (r / d).mkdir(parents=True, exist_ok=True)
        (r / "munge").chmod(0o700)
        key = r / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        sock = r / "munge" / "munge.socket"
        self._spawn("munged", [_which("munged"), "--foreground", "--force", f"--key-file={key}", f"--socket={sock}",
                               f"--pid-file={r / 'munge' / 'munged.pid'}", f"--seed-file={r / 'munge' / 'seed'}",
                               f"--log-file={r / 'log' / 'munged.log'}"])
        self._wait_for(lambda: sock.exists(), timeout, "munged did not create its socket")

        ctld_port, slurmd_port = _free_ports(2)
        self.conf.write_text(f"""\
# one-node test cluster written by tests/slurm/cluster.py
ClusterName=semdlmtest
SlurmctldHost={self.node}({self.controller_addr})
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock},cred_expire={self.cred_expire}
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool' / '%n'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd-%n.pid'}
SlurmctldLogFile={r / 'log' / 'slurmctld.log'}
SlurmdLogFile={r / 'log' / 'slurmd-%n.log'}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2,kill_invalid_depend
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
JobRequeue=1
MinJobAge=3600
KillWait=10
InactiveLimit=0
{self._nodes_conf()}""")
        self._spawn("slurmctld", [*self.prefix, _which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        self._wait_for(lambda: self._run(["scontrol", "ping"], check=False).returncode == 0, timeout,
                       "slurmctld does not answer scontrol ping")
        self._start_slurmds(timeout)
        return self

    def _nodes_conf(self) -> str:
        return (f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.mem_mb} State=UNKNOWN\n"
                f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP\n")

    def _start_slurmds(self, timeout: float) -> None:
        (self.root / "spool" / self.node).mkdir(exist_ok=True)
        self._spawn("slurmd", [_which("slurmd"), "-D", "-N", self.node, "-f", str(self.conf)])
        self._wait_for(lambda: self.node_state() == "idle", timeout, "the node did not become idle")

    def stop(self) -> None:
        """Cancel every job of this cluster, then stop exactly the daemons start() started."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            self._run(["scancel", "--full", "--user", str(os.geteuid())], check=False)
            deadline = time.time() + 30
            while time.time() < deadline and self._run(["squeue", "-h", "-t", "R,CG,S"], check=False).stdout.strip():
                time.sleep(0.5)
        for name in [*(n for n in self.procs if n.startswith("slurmd")), "slurmctld", "munged"]:
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "w")
        self.procs[name] = subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        log.close()

    def _wait_for(self, ready, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{what}: {', '.join(dead)} exited\n{self.daemon_logs()}")
            if ready():
                return
            time.sleep(0.3)
        raise RuntimeError(f"{what} within {timeout:.0f} s\n{self.daemon_logs()}")

    def daemon_logs(self, tail: int = 30) -> str:
        out = []
        for f in sorted((self.root / "log").glob("*")):
            lines = f.read_text(errors="replace").splitlines()[-tail:]
            out.append(f"--- {f.name}\n" + "\n".join(lines))
        return "\n".join(out)

    # ------------------------------------------------------------------ clients
    def _run(self, cmd: list[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("env", self.env)
        proc = subprocess.run([*self.prefix, *cmd], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=60, **kw)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def scontrol(self, *args: str) -> str:
        return self._run(["scontrol", *args]).stdout

    def node_state(self, node: str | None = None) -> str:
        proc = self._run(["sinfo", "-h", "-n", node or self.node, "-o", "%T"], check=False)
        return proc.stdout.strip().rstrip("*~#") if proc.returncode == 0 else ""

    def job_records(self, job_id: str) -> list[dict]:
        """`scontrol show job -o` as dicts (one per array task); [] when the job is unknown."""
        proc = self._run(["scontrol", "show", "job", "-o", str(job_id)], check=False)
        if proc.returncode != 0:
            return []
        records = []
        for line in proc.stdout.splitlines():
            if line.strip():
                records.append(dict(m.groups() for m in re.finditer(r"(\S+?)=(\S*)", line)))
        return records

    def wait(self, job_ids, timeout: float, poll: float = 1.0) -> dict[str, list[dict]]:
        """Wait until every job (every array task) is in a terminal state; their records by job id."""
        ids = [str(j) for j in ([job_ids] if isinstance(job_ids, (str, int)) else job_ids)]
        deadline = time.time() + timeout
        while True:
            records = {j: self.job_records(j) for j in ids}
            done = all(recs and all(r.get("JobState") in TERMINAL for r in recs) for recs in records.values())
            if done:
                return records
            if time.time() > deadline:
                states = {j: [(r.get("JobId"), r.get("JobState"), r.get("Reason")) for r in recs]
                          for j, recs in records.items()}
                raise TimeoutError(f"jobs not finished after {timeout:.0f} s: {states}")
            time.sleep(poll)


def fresh_checkout(base: Path, corpora: Path) -> Path:
    """The repository's tracked (and unignored new) files, copied like a fresh clone to BASE/semdlm, with
    ../shared next to it; DeepSpeed's CPU communication op built (first run on a machine: ~2.5 min, then
    cached), so that no training job's start-up includes it."""
    import pytest

    repo = Path(__file__).resolve().parents[2]
    checkout = base / "semdlm"
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                                capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        pytest.fail("tests/slurm copies the repository's tracked files: run them from a git checkout")
    for rel in filter(None, listed):
        src = repo / rel
        if src.is_file():
            (checkout / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, checkout / rel)
    (base / "shared").symlink_to(corpora.parent, target_is_directory=True)
    subprocess.run([sys.executable, "-c", "from deepspeed.ops.op_builder.cpu.comm import ShareMemCommBuilder\n"
                    "ShareMemCommBuilder().load()"], cwd=checkout, capture_output=True, timeout=900)
    return checkout


class Site:
    """The cluster plus a fresh checkout to submit from."""

    def __init__(self, cluster: Cluster, checkout: Path):
        self.cluster, self.checkout = cluster, checkout
        self.env = dict(cluster.env, PYTHON=sys.executable, PYTHONPATH=str(checkout), HF_HUB_OFFLINE="1",
                        TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
                        OMP_NUM_THREADS="1")
        for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                    "PYTEST_CURRENT_TEST"):
            self.env.pop(var, None)

    def sbatch(self, script: str, options: list[str] = (), **variables) -> str:
        env = dict(self.env, **{k: str(v) for k, v in variables.items()})
        proc = subprocess.run([*self.cluster.prefix, "sbatch", "--parsable", *options, script], cwd=self.checkout,
                              env=env,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60)
        assert proc.returncode == 0, f"sbatch {script} failed: {proc.stderr.strip()}"
        return proc.stdout.strip().split(";")[0]

    def bash(self, script: str, args: list[str] = (), **variables) -> subprocess.CompletedProcess:
        env = dict(self.env, **{k: str(v) for k, v in variables.items()})
        return subprocess.run([*self.cluster.prefix, "bash", script, *args], cwd=self.checkout, env=env,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)

    def log(self, job_id: str, name: str) -> str:
        path = self.checkout / "logs" / f"{name}-{job_id}.out"
        return path.read_text(errors="replace") if path.exists() else f"(no log {path})"

    def wait_ok(self, job_id: str, name: str, timeout: float) -> list[dict]:
        """Wait for a job (all array tasks); assert it COMPLETED with exit 0, showing its log otherwise."""
        records = self.cluster.wait(job_id, timeout)[job_id]
        bad = [r for r in records if r.get("JobState") != "COMPLETED" or r.get("ExitCode") != "0:0"]
        assert not bad, (f"job {job_id} ({name}): " + ", ".join(f"{r.get('JobId')} {r.get('JobState')} "
                         f"exit {r.get('ExitCode')} reason {r.get('Reason')}" for r in bad)
                         + f"\n--- log\n{self.log(job_id, name)[-6000:]}")
        return records
