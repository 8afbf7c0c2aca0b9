"""Preflight: check every host of a multi-host job, in parallel, before anything starts anywhere.

For each host, over SSH: reachable; its python runs and imports the project (``cluster``, ``trainer``);
its MindSpore version (from package metadata, MindSpore itself is not imported); its devices (hccn.conf /
npu-smi on Ascend, CPU slots otherwise) for the visible-device spec; free disk where its job dirs go; and
on the first host (the master) that the rendezvous port is free.  Across hosts: one MindSpore version.

All-or-nothing: ``PreflightResult.ok`` is False when any host has a problem, and ``problems`` holds one
line per failing host naming the host and the cause.  The launcher starts nothing unless it is ok.

The probe runs on each host as ``python -m cluster.preflight probe ...`` and prints one JSON object;
run it by hand on a host to see what the launcher sees.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from cluster.contracts.exitcodes import ExitCode
from cluster.devices import Server

PROBE_MARK = "@pspnet-probe "
DEFAULT_MIN_FREE_GB = 1.0


@dataclass(frozen=True)
class HostReport:
    """What the probe found on one host; ``problems`` empty means ready."""
    host: str                                  # the HostSpec name
    address: str
    problems: List[str] = field(default_factory=list)
    hostname: str = ""
    python: str = ""
    mindspore: Optional[str] = None
    backend: str = ""
    server: Optional[Server] = None            # devices to use there (server_id = the host's address)
    disk_free_gb: Optional[float] = None
    port_free: Optional[bool] = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        return f"{self.host}: " + "; ".join(self.problems) if self.problems else f"{self.host}: ok"

    def to_dict(self) -> Dict[str, Any]:
        return {"host": self.host, "address": self.address, "problems": list(self.problems),
                "hostname": self.hostname, "python": self.python, "mindspore": self.mindspore,
                "backend": self.backend, "server": self.server.to_dict() if self.server else None,
                "devices": self.server.device_ids if self.server else [],
                "disk_free_gb": self.disk_free_gb, "port_free": self.port_free, "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class PreflightResult:
    reports: List[HostReport]
    problems: List[str]                       # one line per failing host (and cross-host findings)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def servers(self) -> List[Server]:
        """The servers in host order (what the merged rank table is built from)."""
        return [r.server for r in self.reports if r.server is not None]

    def summary(self) -> str:
        if self.ok:
            n = sum(len(s.devices) for s in self.servers)
            return (f"preflight ok: {len(self.reports)} hosts, {n} devices, "
                    f"MindSpore {self.reports[0].mindspore or '?'} ({self.seconds:.2f} s)")
        return "preflight failed, nothing was started:\n" + "\n".join(f"  {p}" for p in self.problems)

    def to_dict(self) -> Dict[str, Any]:
        return {"ok": self.ok, "problems": list(self.problems), "seconds": round(self.seconds, 3),
                "hosts": [r.to_dict() for r in self.reports]}


# ---------------------------------------------------------------- the remote probe

def probe(*, backend: str = "auto", devices: Any = None, job_root: str = "runs",
          port: Optional[int] = None, min_free_gb: float = DEFAULT_MIN_FREE_GB,
          hccn_conf: Optional[str] = None, npu_smi: Optional[str] = None) -> Dict[str, Any]:
    """Run on a host: what it has, and what is wrong with it (as data)."""
    import importlib.util
    import platform
    import shutil
    import socket

    problems: List[str] = []
    out: Dict[str, Any] = {"hostname": socket.gethostname(), "python": platform.python_version(),
                           "executable": sys.executable}
    for mod in ("cluster", "trainer"):
        if importlib.util.find_spec(mod) is None:
            problems.append(f"the project is not importable by {sys.executable} (no module {mod!r}); "
                            "install pspnet-cluster there or set workdir: to its checkout")
    try:
        from importlib.metadata import PackageNotFoundError, version
        try:
            out["mindspore"] = version("mindspore")
        except PackageNotFoundError:
            out["mindspore"] = None
            problems.append(f"MindSpore is not installed for {sys.executable}")
    except ImportError:  # pragma: no cover - python < 3.8
        out["mindspore"] = None
    try:
        from cluster.accelerators import resolve
        from cluster.errors import ClusterInputError
        try:
            accelerator = resolve(backend, hccn_conf=hccn_conf, npu_smi=npu_smi)
            server = accelerator.discover(devices=devices, hccn_conf=hccn_conf, npu_smi=npu_smi)
            out["server"] = server.to_dict()
            out["backend"] = accelerator.name
        except ClusterInputError as exc:
            problems.append(f"devices: {exc}")
    except ImportError as exc:
        if not any("not importable" in p for p in problems):
            problems.append(f"cannot import the project's device discovery: {exc}")
    # free disk where job dirs go (the nearest existing parent)
    root = os.path.abspath(os.path.expanduser(job_root or "."))
    probe_dir = root
    while not os.path.exists(probe_dir) and os.path.dirname(probe_dir) != probe_dir:
        probe_dir = os.path.dirname(probe_dir)
    try:
        free = shutil.disk_usage(probe_dir).free / 2 ** 30
        out["disk_free_gb"] = round(free, 2)
        if free < min_free_gb:
            problems.append(f"only {free:.1f} GiB free under {root} (need {min_free_gb:g} GiB for checkpoints)")
    except OSError as exc:
        problems.append(f"cannot check free disk under {root}: {exc.strerror or exc}")
    if os.path.exists(root) and not os.access(root, os.W_OK):
        problems.append(f"job root {root} is not writable")
    if port:
        from cluster.proc import port_is_free
        out["port_free"] = port_is_free(int(port))
        if not out["port_free"]:
            problems.append(f"rendezvous port {port} is in use (choose another with --port)")
    out["problems"] = problems
    return out


def probe_argv(host: Any, *, backend: str, devices: Any, port: Optional[int], min_free_gb: float,
               job_root: Optional[str] = None) -> List[str]:
    argv = [host.python, "-m", "cluster.preflight", "probe", "--backend", backend,
            "--job-root", job_root or host.remote_job_root(), "--min-free-gb", f"{min_free_gb:g}"]
    if getattr(host, "hccn_conf", None):
        argv += ["--hccn-conf", host.hccn_conf]
    if getattr(host, "npu_smi", None):
        argv += ["--npu-smi", host.npu_smi]
    if devices is not None:
        argv += ["--devices", str(devices)]
    if port:
        argv += ["--port", str(int(port))]
    return argv


# ---------------------------------------------------------------- the local side

def check_host(host: Any, conn, *, backend: str = "auto", devices: Any = None, port: Optional[int] = None,
               min_free_gb: float = DEFAULT_MIN_FREE_GB, timeout: float = 60.0) -> HostReport:
    """Run the probe on one host over SSH and turn any outcome into a HostReport."""
    from cluster import ssh

    t0 = time.monotonic()
    spec = host.device_spec(devices)
    argv = probe_argv(host, backend=backend, devices=spec, port=port, min_free_gb=min_free_gb)
    cmd = ssh.remote_command(argv, {**host.env, "PYTHONDONTWRITEBYTECODE": "1"}, host.workdir)
    res = ssh.run(conn, cmd, host=host.name, timeout=timeout)

    def fail(msg: str) -> HostReport:
        return HostReport(host.name, host.address, [msg], seconds=time.monotonic() - t0)

    if res.error:
        return fail(res.error)
    text = res.stdout + "\n" + res.stderr
    if res.exited == 127 or "No such file or directory" in text and host.python in text:
        return fail(f"python not found: {host.python} (set python: or venv: for this host in the hostfile)")
    if res.exited != 0 and host.workdir and ("can't cd" in text or "cd:" in text):
        return fail(f"working directory {host.workdir} does not exist (fix workdir: in the hostfile)")
    if "No module named" in text and "cluster" in text:
        where = f" in {host.workdir}" if host.workdir else ""
        return fail(f"the project is not importable by {host.python}{where} "
                    "(install pspnet-cluster there or set workdir: to its checkout)")
    data = None
    for line in reversed(res.stdout.splitlines()):
        if line.startswith(PROBE_MARK):
            try:
                data = json.loads(line[len(PROBE_MARK):])
            except ValueError:
                data = None
            break
    if res.exited != 0 or data is None:
        return fail(f"preflight probe failed ({res.reason()})")
    server = server_from_probe(host, data)
    return HostReport(host.name, host.address, list(data.get("problems") or []), hostname=data.get("hostname", ""),
                      python=data.get("python", ""), mindspore=data.get("mindspore"),
                      backend=data.get("backend", ""), server=server, disk_free_gb=data.get("disk_free_gb"),
                      port_free=data.get("port_free"), seconds=time.monotonic() - t0)


def server_from_probe(host: Any, data: Dict[str, Any]) -> Optional[Server]:
    """The ``Server`` a host's probe reported, named for the rank table: ``server_id`` is the host's
    address when that is an IPv4 address (what HCCL expects), else what the host said about itself;
    ``host`` is the host's name (the launcher places that host's ranks by it)."""
    s = data.get("server")
    if not s:
        return None
    from cluster.devices import Device
    fields = _device_fields()
    devices = tuple(Device(**d) if fields.issuperset(d) else Device(**{k: v for k, v in d.items() if k in fields})
                    for d in s.get("devices", ()))
    return Server(server_id=host.address if _is_ipv4(host.address) else (s.get("server_id") or host.address),
                  devices=devices, host=host.name, host_ip=s.get("host_ip"), super_pod_id=s.get("super_pod_id"))


_DEVICE_FIELDS: Optional[frozenset] = None


def _device_fields() -> frozenset:
    """Fields a Device takes (a newer host may report more; those are dropped)."""
    global _DEVICE_FIELDS
    if _DEVICE_FIELDS is None:
        from cluster.devices import Device
        _DEVICE_FIELDS = frozenset(Device.__dataclass_fields__)  # type: ignore[attr-defined]
    return _DEVICE_FIELDS


def _is_ipv4(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 4 and all(p.isdigit() and 0 <= int(p) <= 255 for p in parts)


def run_preflight(hosts: Sequence[Any], conns: Optional[Dict[str, Any]] = None, *, backend: str = "auto",
                  devices: Any = None, port: Optional[int] = None, min_free_gb: float = DEFAULT_MIN_FREE_GB,
                  timeout: float = 60.0) -> PreflightResult:
    """Probe every host in parallel; the port is checked on the first host only (the master)."""
    from cluster import ssh

    t0 = time.monotonic()
    conns = conns if conns is not None else {h.name: ssh.connect(h) for h in hosts}

    def one(item):
        i, h = item
        return check_host(h, conns[h.name], backend=backend, devices=devices,
                          port=port if i == 0 else None, min_free_gb=min_free_gb, timeout=timeout)

    reports = ssh.run_parallel(list(enumerate(hosts)), one)
    problems = [r.line() for r in reports if not r.ok]
    ok_reports = [r for r in reports if r.ok]
    # one MindSpore everywhere: name each host that differs from the first one that answered
    if ok_reports:
        ref = ok_reports[0]
        for r in ok_reports[1:]:
            if r.mindspore != ref.mindspore:
                problems.append(f"{r.host}: MindSpore {r.mindspore} differs from {ref.host} ({ref.mindspore}); "
                                "install the same version on every host")
        backends = {r.backend for r in ok_reports}
        if len(backends) > 1:
            problems.append("hosts disagree on the backend (" + ", ".join(f"{r.host}: {r.backend}" for r in ok_reports)
                            + "); give --backend or fix the hosts' devices")
    return PreflightResult(list(reports), problems, seconds=time.monotonic() - t0)


# ---------------------------------------------------------------- command line (the remote side)

def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m cluster.preflight",
                                 description="what a multi-host launch checks on this host")
    sub = ap.add_subparsers(dest="cmd")
    p = sub.add_parser("probe", help="print this host's readiness as one JSON line")
    p.add_argument("--backend", default="auto")
    p.add_argument("--devices", default=None)
    p.add_argument("--job-root", default="runs")
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--min-free-gb", type=float, default=DEFAULT_MIN_FREE_GB)
    p.add_argument("--hccn-conf", default=None)
    p.add_argument("--npu-smi", default=None)
    args = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.cmd != "probe":
        ap.print_help()
        return ExitCode.BAD_INPUT
    out = probe(backend=args.backend, devices=args.devices, job_root=args.job_root, port=args.port,
                min_free_gb=args.min_free_gb, hccn_conf=args.hccn_conf, npu_smi=args.npu_smi)
    sys.stdout.write(PROBE_MARK + json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
