"""A real two-node SLURM cluster on one machine: each slurmd in its own network, UTS, IPC and mount namespaces.

Layout (every address exists only inside these namespaces; nothing is configured in the machine's own
network, and no packet leaves it):

  head   a network namespace holding the bridge ``br0`` (10.213.7.1/24): slurmctld runs there, and so do
         the test's clients (sbatch, squeue, scontrol: ``Cluster.prefix``);
  sdn1   10.213.7.11 \\  each node: its own hostname, loopback, SysV/POSIX IPC, a private tmpfs on /dev/shm,
  sdn2   10.213.7.12 /  /etc/hosts naming the nodes (the cluster's DNS), and ``local/`` (the node-local scratch
         directory: one path, a different directory per node); a veth pair joins it to ``br0``.

Everything else - the repository, the artifacts, the run directories - is the machine's filesystem, which
both nodes see as a cluster's shared filesystem. One munged (its socket is a file) serves all three.
A namespace is held by a ``sleep`` started with ``unshare`` that dies with the test process
(PR_SET_PDEATHSIG); ``stop()`` kills every process left in a node's namespaces, so the namespaces,
their links and mounts disappear with their last process, pass or fail.

``fail_node`` is a node failure as the other node sees it: the node's processes are frozen, its link
goes down (no FIN, no RST: its peers' sockets just stop hearing from it), then its job processes are
killed. ``restore_node`` brings the link back (the node rebooted): its slurmd registers again.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cluster import Cluster, _die_with_parent, _which

NET = "10.213.7"   # a private /24 that exists only inside the namespaces
HEAD_ADDR = f"{NET}.1"
NODES = {"sdn1": f"{NET}.11", "sdn2": f"{NET}.12"}


def _netns(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def pids_in(namespaces: set[str]) -> list[int]:
    """Every process whose network namespace is one of ``namespaces``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "ns" / "net") in namespaces:
                    out.append(int(entry.name))
            except OSError:  # gone meanwhile
                pass
    return out


def _check(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")


class TwoNodeCluster(Cluster):
    """slurmctld in ``head``, one slurmd in each of ``sdn1`` and ``sdn2`` (CPUs and memory declared per node)."""

    def __init__(self, root: Path, cpus_per_node: int = 4, mem_mb_per_node: int = 10000, cred_expire: int = 5,
                 slurmd_timeout: int = 300):
        super().__init__(root, cpus=cpus_per_node, cred_expire=cred_expire)
        self.mem_mb = mem_mb_per_node
        self.slurmd_timeout = slurmd_timeout
        self.controller_addr = HEAD_ADDR
        self.holders: dict[str, subprocess.Popen] = {}
        self.nodes = list(NODES)
        self.local = self.root / "local"  # the node-local scratch directory: one path, one directory per node

    # ------------------------------------------------------------------ namespaces
    def start(self, timeout: float = 60) -> TwoNodeCluster:
        for tool in ("unshare", "nsenter", "ip", "mount"):
            if _which(tool) is None:
                raise RuntimeError(f"the two-node cluster needs {tool} (util-linux / iproute2)")
        self.root.mkdir(parents=True, exist_ok=True)
        self.local.mkdir(exist_ok=True)
        hosts = self.root / "hosts"
        hosts.write_text("127.0.0.1 localhost\n" + f"{HEAD_ADDR} head\n"
                         + "".join(f"{addr} {name}\n" for name, addr in NODES.items()))
        self._hold("head", ["unshare", "--net", "--", "sh", "-ec",
                            "ip link set lo up; ip link add br0 type bridge; "
                            f"ip addr add {HEAD_ADDR}/24 dev br0; ip link set br0 up; "
                            'touch "$0"; exec sleep infinity'])
        head = self.holders["head"].pid
        self.prefix = ["nsenter", "-t", str(head), "--net", "--"]
        for i, (name, addr) in enumerate(NODES.items(), 1):
            scratch = self.root / "nodes" / name / "local"
            scratch.mkdir(parents=True, exist_ok=True)
            self._hold(name, ["unshare", "--net", "--uts", "--ipc", "--mount", "--propagation", "private", "--",
                              "sh", "-ec",
                              f"hostname {name}; mount -t tmpfs -o mode=1777,size=8g shm /dev/shm; "
                              f"mount --bind {hosts} /etc/hosts; mount --bind {scratch} {self.local}; "
                              'ip link set lo up; touch "$0"; exec sleep infinity'])
            pid = self.holders[name].pid
            _check(["nsenter", "-t", str(head), "--net", "--", "ip", "link", "add", f"veth{i}", "type", "veth",
                    "peer", "name", "eth0", "netns", str(pid)])
            _check(["nsenter", "-t", str(head), "--net", "--", "ip", "link", "set", f"veth{i}", "master", "br0",
                    "up"])
            _check([*self.enter(name), "sh", "-ec", f"ip addr add {addr}/24 dev eth0; ip link set eth0 up"])
        return super().start(timeout)

    def _hold(self, name: str, cmd: list[str]) -> None:
        """A namespace holder: ``cmd`` sets the namespace up, touches its ready file ($0), then sleeps."""
        ready = self.root / f".{name}.ready"
        ready.unlink(missing_ok=True)
        cmd = [*cmd, str(ready)]  # sh -ec SCRIPT $0
        self.holders[name] = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                              stderr=open(self.root / f".{name}.err", "w"),
                                              preexec_fn=_die_with_parent)
        deadline = time.time() + 30
        while not ready.exists():
            if self.holders[name].poll() is not None or time.time() > deadline:
                err = (self.root / f".{name}.err").read_text()
                raise RuntimeError(f"could not set up the namespaces of {name}: {err.strip()}")
            time.sleep(0.05)

    def enter(self, node: str) -> list[str]:
        """The command prefix that runs a command on ``node`` (in all of its namespaces)."""
        return ["nsenter", "-t", str(self.holders[node].pid), "--net", "--uts", "--ipc", "--mount", "--"]

    def _nodes_conf(self) -> str:
        lines = [f"NodeName={name} NodeAddr={addr} CPUs={self.cpus} RealMemory={self.mem_mb} State=UNKNOWN"
                 for name, addr in NODES.items()]
        return ("SlurmdParameters=config_overrides\n"  # the nodes declare more CPUs than they have
                f"SlurmdTimeout={self.slurmd_timeout}\n" + "\n".join(lines) + "\n"
                f"PartitionName=debug Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP\n")

    def _start_slurmds(self, timeout: float) -> None:
        for name in NODES:
            (self.root / "spool" / name).mkdir(parents=True, exist_ok=True)
            self._spawn(f"slurmd-{name}", [*self.enter(name), _which("slurmd"), "-D", "-N", name, "-f",
                                           str(self.conf)])
        for name in NODES:
            self._wait_for(lambda n=name: self.node_state(n) == "idle", timeout, f"node {name} did not become idle")

    # ------------------------------------------------------------------ processes and failures
    def namespaces(self) -> set[str]:
        """The network namespaces of the cluster (head and nodes), e.g. 'net:[4026532301]'."""
        return {_netns(h.pid) for h in self.holders.values()}

    def node_pids(self, node: str) -> list[int]:
        """Every process in ``node``'s network namespace but its holder."""
        holder = self.holders[node].pid
        return [p for p in pids_in({_netns(holder)}) if p != holder]

    def job_pids(self, node: str) -> list[int]:
        """The job's processes on ``node``: everything in its namespaces but its slurmd and holder."""
        slurmd = self.procs[f"slurmd-{node}"].pid
        return [p for p in self.node_pids(node) if p != slurmd]

    def fail_node(self, node: str) -> list[int]:
        """A node failure: freeze the node's job processes, cut its link, kill them. Their pids."""
        pids = self.job_pids(node)
        for sig in (signal.SIGSTOP, None, signal.SIGKILL):
            if sig is None:
                _check([*self.enter(node), "ip", "link", "set", "eth0", "down"])
                continue
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        return pids

    def restore_node(self, node: str) -> None:
        _check([*self.enter(node), "ip", "link", "set", "eth0", "up"])

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            for name in NODES:
                if name in self.holders:
                    for pid in self.node_pids(name):
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
            for holder in self.holders.values():
                holder.kill()
                holder.wait()
            self.holders.clear()


def main(argv: list[str]) -> int:
    """``python tests/slurm/two_nodes.py DIR`` (root): bring the cluster up in DIR, print how to use it, and
    keep it until Ctrl-C (or SIGTERM), then tear it down."""
    if len(argv) != 1:
        print("usage: python tests/slurm/two_nodes.py DIR   (as root; Ctrl-C tears the cluster down)", file=sys.stderr)
        return 2
    from cluster import ensure_installed

    ensure_installed()
    cluster = TwoNodeCluster(Path(argv[0]).resolve())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        cluster.start()
        head = " ".join(cluster.prefix)
        print(f"two-node cluster up: nodes {', '.join(f'{n} ({a})' for n, a in NODES.items())}, controller "
              f"{HEAD_ADDR}\n  export SLURM_CONF={cluster.conf}\n"
              f"  {head} sinfo\n  {head} sbatch --nodes=2 --ntasks-per-node=2 --gpus-per-node=0 --cpus-per-task=1 "
              f"--mem=3G slurm/train.sh\n  a shell on sdn2: {' '.join(cluster.enter('sdn2'))} bash\n"
              f"node-local scratch: {cluster.local} (each node its own); logs: {cluster.root / 'log'}\n"
              "Ctrl-C tears it down.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        cluster.stop()


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main(sys.argv[1:]))
