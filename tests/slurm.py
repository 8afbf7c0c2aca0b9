"""A real Slurm cluster on this machine for the Slurm tests and benchmark: ``munged``, ``slurmctld`` and
two ``slurmd`` (``-N node1``, ``-N node2``), each node with its own port, all on 127.0.0.1.

Everything lives in a short temporary dir (slurmd puts unix sockets in its spool dir, and their paths
must stay under 108 bytes): slurm.conf, a fresh munge key, state, spool, pid and log files.  No
systemd, no /etc: clients find the cluster through ``SLURM_CONF`` (``cluster.env()``).  Both nodes
claim all of this machine's CPUs, so each can run as many tasks as the machine has cores.  Needs root
(slurmd starts job steps as the submitting user) and Debian's slurm-wlm + munge (setup.sh --test).

    with SlurmCluster() as c:
        subprocess.run(["srun", "-N2", "hostname"], env=c.env())

``node1_only`` is a directory that node2 does not see: node2's slurmd runs in its own mount namespace
with an empty tmpfs mounted over it, as a node that lacks a shared file system would be (a job dir
there must fail the launcher's preflight).

The session fixture ``slurm_cluster`` starts one cluster for all tests that use it (start: ~2 s).
Partition ``debug`` (default) holds both nodes with a 2-hour time limit, enforced at submission,
so a longer ``--time`` is refused by sbatch.
"""
from __future__ import annotations

import getpass
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

SBIN = ("/usr/sbin", "/usr/bin")
NODES = ("node1", "node2")
PARTITION = "debug"
MAX_TIME = "2:00:00"


def _which(name: str) -> Optional[str]:
    found = shutil.which(name)
    if found:
        return found
    for d in SBIN:
        if os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    return None


def missing_programs() -> List[str]:
    return [p for p in ("munged", "slurmctld", "slurmd", "srun", "sbatch", "sinfo", "scontrol", "unshare")
            if _which(p) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    def __init__(self, root: Optional[str] = None, cpus: Optional[int] = None) -> None:
        self.dir = Path(root or tempfile.mkdtemp(prefix="pslurm."))
        self.cpus = cpus or len(os.sched_getaffinity(0))
        self.conf = self.dir / "slurm.conf"
        self.munge_socket = self.dir / "munge" / "sock"
        self.node1_only = self.dir / "node1-only"
        self.procs: Dict[str, subprocess.Popen] = {}

    # ------------------------------------------------------------ config
    def _write_config(self) -> None:
        d = self.dir
        for sub in ("munge", "state", "log", "node1-only", *(f"spool/{n}" for n in NODES)):
            (d / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o755)                  # munged wants its socket dir searchable by everyone
        key = d / "munge" / "key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        ctld_port, d_ports = _free_port(), [_free_port() for _ in NODES]
        lines = [
            "ClusterName=pspnettest",
            "SlurmctldHost=localhost(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmUser={getpass.getuser()}",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={d / 'state'}",
            f"SlurmdSpoolDir={d / 'spool'}/%n",
            f"SlurmctldPidFile={d / 'slurmctld.pid'}",
            f"SlurmdPidFile={d / 'slurmd.%n.pid'}",
            f"SlurmctldLogFile={d / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={d / 'log' / 'slurmd.%n.log'}",
            # no cgroups here: process groups track a step's processes; Slurm binds no cores itself
            "ProctrackType=proctrack/pgid",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/backfill",
            "MpiDefault=none",
            "ReturnToService=2",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "EnforcePartLimits=ALL",
            "InactiveLimit=0",
            "KillWait=5",
            "MinJobAge=300",
            "SlurmdTimeout=60",
        ]
        for name, port in zip(NODES, d_ports):
            lines.append(f"NodeName={name} NodeAddr=127.0.0.1 NodeHostname={socket.gethostname()} Port={port} "
                         f"CPUs={self.cpus} RealMemory=2000 State=UNKNOWN")
        lines.append(f"PartitionName={PARTITION} Nodes={','.join(NODES)} Default=YES MaxTime={MAX_TIME} "
                     "OverSubscribe=YES State=UP")
        self.conf.write_text("\n".join(lines) + "\n")

    def env(self, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        """An environment whose Slurm clients talk to this cluster (and nothing of an outer job)."""
        env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("SLURM_")}
        env["SLURM_CONF"] = str(self.conf)
        return env

    # ------------------------------------------------------------ lifecycle
    def _spawn(self, name: str, argv: List[str]) -> None:
        log = open(self.dir / "log" / f"{name}.out", "ab")
        try:
            self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL, env=self.env(),
                                                start_new_session=True)
        finally:
            log.close()

    def _log_tail(self) -> str:
        out = []
        for p in sorted((self.dir / "log").glob("*")):
            text = p.read_text(errors="replace").strip().splitlines()[-8:]
            out.append(f"--- {p.name}\n" + "\n".join(text))
        return "\n".join(out)

    def start(self, timeout: float = 30.0) -> "SlurmCluster":
        missing = missing_programs()
        if missing:
            raise RuntimeError(f"Slurm is not installed ({', '.join(missing)} missing): run ./setup.sh --test "
                               "(Debian slurm-wlm and munge)")
        self._write_config()
        d = self.dir
        self._spawn("munged", [_which("munged"), "-F", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={d / 'munge' / 'key'}", f"--log-file={d / 'log' / 'munged.log'}",
                               f"--pid-file={d / 'munge' / 'pid'}", f"--seed-file={d / 'munge' / 'seed'}"])
        deadline = time.monotonic() + timeout
        while not self.munge_socket.exists():
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError("munged made no socket in time:\n" + self._log_tail())
            time.sleep(0.02)
        # -i: ignore a state dir left by a crash; -D: foreground, so the pid is ours to stop
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)])
        for n in NODES:
            argv = [_which("slurmd"), "-D", "-N", n, "-f", str(self.conf)]
            if n == "node2":
                # its own mount namespace, an empty tmpfs over node1_only; then exec slurmd (same pid)
                argv = [_which("unshare"), "--mount", "--propagation", "private", "sh", "-c",
                        f'mount -t tmpfs pslurm-hidden {shlex.quote(str(self.node1_only))} && exec "$@"', "sh",
                        *argv]
            self._spawn(f"slurmd-{n}", argv)
        while True:
            self._check_alive()
            out = subprocess.run([_which("sinfo"), "-h", "-N", "-o", "%N %t"], env=self.env(),
                                 capture_output=True, text=True, timeout=10).stdout.split("\n")
            idle = {l.split()[0] for l in out if l.strip().endswith(" idle")}
            if idle >= set(NODES):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Slurm nodes not idle within {timeout:g} s (sinfo: {out}):\n" + self._log_tail())
            time.sleep(0.1)

    def _check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                tail = self._log_tail()
                self.stop()
                raise RuntimeError(f"{name} exited with code {p.returncode}:\n{tail}")

    def stop(self) -> None:
        """Cancel what is left, then stop the daemons by pid (slurmd first, munged last)."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            subprocess.run([_which("scancel") or "scancel", "--full", "--user", str(os.getuid())],
                           env=self.env(), capture_output=True, timeout=10)
        for name in [n for n in self.procs if n.startswith("slurmd")] + ["slurmctld", "munged"]:
            p = self.procs.pop(name, None)
            if p is None:
                continue
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(timeout=5)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()

    # ------------------------------------------------------------ helpers for tests
    def run(self, argv: List[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env=kw.pop("env", None) or self.env(), capture_output=True, text=True,
                              timeout=timeout, **kw)

    def job_state(self, job_id: str) -> str:
        """The job's state as ``scontrol`` reports it (PENDING, RUNNING, COMPLETED, CANCELLED...)."""
        out = self.run(["scontrol", "-o", "show", "job", str(job_id)]).stdout
        for word in out.split():
            if word.startswith("JobState="):
                return word.split("=", 1)[1]
        return "UNKNOWN"

    def wait_job(self, job_id: str, timeout: float, states=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                                                 "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY")) -> str:
        deadline = time.monotonic() + timeout
        while True:
            st = self.job_state(job_id)
            if st in states or time.monotonic() > deadline:
                return st
            time.sleep(0.2)


@pytest.fixture(scope="session")
def slurm_cluster():
    missing = missing_programs()
    if missing:
        pytest.fail(f"Slurm is not installed ({', '.join(missing)} missing): run ./setup.sh --test")
    c = SlurmCluster()
    c.start()
    yield c
    c.cleanup()
