"""Real sshd servers on loopback addresses, one per "host", for the multi-host tests and benchmark.

``SshdCluster(tmp_path, n)`` starts ``/usr/sbin/sshd`` on 127.0.0.2, 127.0.0.3, ... (one process per
address, an unprivileged port), with a throwaway host key and a test client key made by ssh-keygen
under ``tmp_path``.  The remote python is this machine's interpreter (with the project installed), the
remote working dir a directory under ``tmp_path``, and each host has its own job root, so each "host" runs
the same checkout but shares no job files: everything else (SSH, process groups, output
streaming, files copied by SFTP) is real.

    with SshdCluster(tmp_path, 2) as cluster:
        hosts = cluster.host_specs()          # cluster.hosts.HostSpec, ready for the launcher
        cluster.write_hostfile(tmp_path / "hosts.yaml")

The pytest fixture ``sshd_cluster`` (import it into a test module) yields a factory:
``sshd_cluster(n, max_sessions=100)`` -> a started ``SshdCluster`` that is stopped after the test.
"""
from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"


def free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "pspnet-test", "-f", str(path)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


class SshdHost:
    """One loopback "host": its address, port and sshd process."""

    def __init__(self, name: str, address: str, port: int, config: Path, log: Path) -> None:
        self.name, self.address, self.port, self.config, self.log = name, address, port, config, log
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> None:
        logfh = open(self.log, "ab")
        # -D: stay in the foreground (so the test owns the process); -e: log to stderr (our log file)
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)], stdout=logfh,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        logfh.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd on {self.address}:{self.port} exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection((self.address, self.port), timeout=0.5) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sshd on {self.address}:{self.port} did not answer within 10 s")

    def session_pids(self) -> List[int]:
        """The sshd processes serving this host's open connections (not the commands they run)."""
        import psutil
        if self.proc is None:
            return []
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        out = []
        for k in kids:
            try:
                if k.exe() == os.path.realpath(SSHD) or k.name().startswith("sshd"):
                    out.append(k.pid)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return out

    def drop_connections(self) -> int:
        """Kill the sshd processes of the open connections, as a network failure or a host crash
        would end them; the commands they started are left to notice on their own.  Returns how many."""
        pids = self.session_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)

    def stop(self) -> None:
        """Stop the listener and the connections it serves (sessions run in their own sessions)."""
        if self.proc is None:
            return
        self.drop_connections()
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        self.proc = None


class SshdCluster:
    """``n`` sshd servers on 127.0.0.2 ... 127.0.0.(n+1) sharing one host key and one client key."""

    def __init__(self, tmp_path: Path, n: int = 2, first: int = 2, max_sessions: int = 100) -> None:
        self.dir = Path(tmp_path) / "sshd"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.user = getpass.getuser()
        self.key = self.dir / "id_test"
        self.host_key = self.dir / "host_key"
        self.known_hosts = self.dir / "known_hosts"
        self.python = sys.executable
        # the hosts' working dir: not this checkout (ranks write scratch files into their cwd); the
        # project is importable anyway, installed (editable) into the interpreter
        self.workdir = str(self.dir / "home")
        Path(self.workdir).mkdir(exist_ok=True)
        self.hosts: List[SshdHost] = []
        self._n, self._first, self._max_sessions = n, first, max_sessions

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> "SshdCluster":
        if not os.path.exists(SSHD):
            raise RuntimeError("sshd is not installed: run ./setup.sh --test (Debian openssh-server)")
        _keygen(self.key)
        _keygen(self.host_key)
        auth = self.dir / "authorized_keys"
        auth.write_text(Path(str(self.key) + ".pub").read_text())
        os.chmod(auth, 0o600)
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)   # privilege-separation dir sshd wants as root
        host_pub = Path(str(self.host_key) + ".pub").read_text().split()
        kh_lines = []
        for i in range(self._n):
            address = f"127.0.0.{self._first + i}"
            port = free_port(address)
            cfg = self.dir / f"sshd_{address}.conf"
            cfg.write_text("\n".join([
                f"ListenAddress {address}:{port}",
                f"HostKey {self.host_key}",
                f"AuthorizedKeysFile {auth}",
                f"PidFile {self.dir / f'sshd_{address}.pid'}",
                "StrictModes no",
                "UsePAM no",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UseDNS no",
                "PrintMotd no",
                "MaxStartups 100:30:200",
                f"MaxSessions {self._max_sessions}",
                "LogLevel ERROR",
                "Subsystem sftp internal-sftp",
                "",
            ]))
            host = SshdHost(f"host{i}", address, port, cfg, self.dir / f"sshd_{address}.log")
            host.start()
            self.hosts.append(host)
            kh_lines.append(f"[{address}]:{port} {host_pub[0]} {host_pub[1]}")
        self.known_hosts.write_text("\n".join(kh_lines) + "\n")
        return self

    def stop(self) -> None:
        for h in self.hosts:
            h.stop()

    def __enter__(self) -> "SshdCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------- what the launcher needs
    def job_root(self, host: SshdHost) -> str:
        """Each "host" keeps its job dirs in its own directory: no file system is shared."""
        return str(self.dir / f"{host.name}-runs")

    def host_specs(self, devices: Optional[str] = "1", **extra):
        from cluster.hosts import HostSpec
        return [HostSpec(name=h.name, address=h.address, port=h.port, user=self.user,
                         identity_file=str(self.key), python=self.python, workdir=self.workdir,
                         devices=devices, job_root=self.job_root(h), **extra)
                for h in self.hosts]

    def hostfile_text(self, devices: str = "1") -> str:
        lines = ["defaults:", f"  user: {self.user}", f"  identity_file: {self.key}",
                 f"  python: {self.python}", f"  workdir: {self.workdir}", "hosts:"]
        for h in self.hosts:
            lines += [f"  - name: {h.name}", f"    address: {h.address}", f"    port: {h.port}",
                      f"    devices: \"{devices}\"", f"    job_root: {self.job_root(h)}"]
        return "\n".join(lines) + "\n"

    def write_hostfile(self, path: Path, devices: str = "1") -> Path:
        Path(path).write_text(self.hostfile_text(devices))
        return Path(path)


@pytest.fixture
def sshd_cluster(tmp_path):
    started: List[SshdCluster] = []

    def make(n: int = 2, **kwargs) -> SshdCluster:
        c = SshdCluster(tmp_path / f"c{len(started)}", n, first=2 + 10 * len(started), **kwargs)
        started.append(c)
        return c.start()

    yield make
    for c in started:
        c.stop()
