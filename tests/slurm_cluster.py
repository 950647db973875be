"""A real one-node SLURM cluster for the tests, from Debian's packages.

``ensure_installed()`` installs munge, slurmctld, slurmd and the client tools with apt-get
when they are missing (root only); ``Cluster`` writes a slurm.conf for this host into a
private directory, starts munged, slurmctld and slurmd on free ports, waits until the node is
idle, and stops everything again. No system file is changed except munge's key (made by the
package) and the packages themselves.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ["munge", "slurmctld", "slurmd", "slurm-client"]
BINARIES = ["munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "sinfo", "scancel"]


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if not shutil.which(b) and not Path("/usr/sbin", b).exists()]


def ensure_installed() -> str | None:
    """Install the packages if needed; return why the cluster cannot run, or None."""
    if not missing_binaries():
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return f"SLURM is not installed ({', '.join(missing_binaries())} missing) and apt-get as root is not available"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    update = subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True, env=env)
    install = subprocess.run(["apt-get", "install", "-y", "-qq", *PACKAGES], capture_output=True, text=True, env=env)
    if install.returncode != 0:
        return f"apt-get install {' '.join(PACKAGES)} failed: {(update.stderr + install.stderr)[-500:]}"
    return None if not missing_binaries() else f"still missing after install: {missing_binaries()}"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _sbin(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


class Cluster:
    """One node (this host) with ``cpus`` CPUs in partition ``debug``."""

    def __init__(self, root: Path, cpus: int = 2):
        self.root = Path(root)
        self.cpus = cpus
        self.procs: list[subprocess.Popen] = []
        self.host = socket.gethostname().split(".")[0]
        for sub in ("state", "spool", "log", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.conf = self.root / "slurm.conf"
        self.socket = self.root / "munge" / "munge.socket"
        ctld_port, slurmd_port = _free_ports(2)
        r = self.root
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=trainkit-test",
                    f"SlurmctldHost={self.host}(127.0.0.1)",
                    f"SlurmctldPort={ctld_port}",
                    f"SlurmdPort={slurmd_port}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    # cred_expire also delays the restart of a requeued job (default 120 s)
                    f"AuthInfo=socket={self.socket},cred_expire=10",
                    f"StateSaveLocation={r}/state",
                    f"SlurmdSpoolDir={r}/spool",
                    f"SlurmctldPidFile={r}/slurmctld.pid",
                    f"SlurmdPidFile={r}/slurmd.pid",
                    f"SlurmctldLogFile={r}/log/slurmctld.log",
                    f"SlurmdLogFile={r}/log/slurmd.log",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "SchedulerType=sched/builtin",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_CPU",
                    "ReturnToService=2",
                    "MpiDefault=none",
                    "JobRequeue=1",
                    "KillWait=5",
                    "InactiveLimit=0",
                    "MinJobAge=600",
                    f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN",
                    f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self, timeout: float = 60) -> None:
        log = self.root / "log"
        self.procs.append(
            subprocess.Popen(
                [_sbin("munged"), "--foreground", "--force", f"--socket={self.socket}",
                 f"--pid-file={self.root / 'munge' / 'munged.pid'}", f"--seed-file={self.root / 'munge' / 'seed'}",
                 f"--log-file={log / 'munged.log'}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            )
        )
        self._wait(lambda: self.socket.exists(), timeout, "munged socket")
        for daemon in ("slurmctld", "slurmd"):
            self.procs.append(
                subprocess.Popen([_sbin(daemon), "-D", "-f", str(self.conf)], env=self.env,
                                 stdout=open(log / f"{daemon}.out", "w"), stderr=subprocess.STDOUT)
            )
        self._wait(lambda: "idle" in self.run("sinfo", "-h", "-o", "%t").stdout, timeout, "an idle node")

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            if any(p.poll() is not None for p in self.procs):
                break
            time.sleep(0.5)
        raise RuntimeError(f"SLURM test cluster: no {what}; logs:\n{self.logs()}")

    def run(self, *cmd: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), env={**self.env, **kw.pop("env", {})}, capture_output=True, text=True, **kw)

    def job_state(self, job: str) -> str:
        out = self.run("scontrol", "show", "job", job).stdout
        for field in out.split():
            if field.startswith("JobState="):
                return field.split("=", 1)[1]
        return "UNKNOWN"

    def field(self, job: str, name: str) -> str:
        out = self.run("scontrol", "show", "job", job).stdout
        for field in out.split():
            if field.startswith(f"{name}="):
                return field.split("=", 1)[1]
        return ""

    def wait_state(self, job: str, states: set[str], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.job_state(job)
            if state in states:
                return state
            time.sleep(1)
        raise AssertionError(f"job {job} is {state}, not in {states} after {timeout} s\n{self.logs()}")

    def logs(self) -> str:
        out = []
        for f in sorted((self.root / "log").glob("*")):
            out.append(f"--- {f.name}\n" + f.read_text(errors="replace")[-2000:])
        return "\n".join(out)

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
