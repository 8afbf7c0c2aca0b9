"""Multi-host launch figures, measured on loopback "hosts" (real sshd per address, this machine's python).

    .venv/bin/python benchmarks/multihost.py [--hosts 2,4] [--ranks-per-host 1] [--repeat 3]
    .venv/bin/python benchmarks/multihost.py --ranktable-only [--servers 512 --devices 8]

Per host count, median of ``--repeat`` runs, side by side with the same processes started locally:
- preflight: every host probed in parallel over SSH (connect + probe);
- launch -> all running: from ``start`` of the first process to every rank's first event (the fake
  worker's ``start``), through fabric channels and the process-group wrapper;
- failure -> group down: a rank on the last host is SIGKILLed; time until the supervisor saw it
  (detect) and until every process on every host was gone (down);
- stop -> group down: SIGTERM to every remote group (``stop``/Ctrl-C), until all are reaped.
Then the rank table of a simulated cluster (512 servers x 8 devices by default): the servers built from
per-host probe reports the way the preflight builds them, merged in host order, validated, written as
JSON, and read back and validated again.  Target: under 100 ms.

Figures are wall-clock on a shared machine: expect noise, compare ratios measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

FAKE = str(ROOT / "tests" / "workers" / "fake_worker.py")


class TimingSink:
    """A LineSink that notes when the first event arrived."""

    def __init__(self) -> None:
        self.first_event = None
        self.got = threading.Event()
        self.lines = 0

    def line(self, text: str) -> None:
        self.lines += 1
        if self.first_event is None and text.startswith("@pspnet "):
            self.first_event = time.monotonic()
            self.got.set()

    def close(self) -> None:
        pass


def worker_specs(hosts, ranks_per_host, job_dir, remote):
    from cluster.contracts.env import RankEnv
    from orchestrator.workers import WorkerSpec
    specs = []
    world = len(hosts) * ranks_per_host
    for hi, h in enumerate(hosts):
        for lr in range(ranks_per_host):
            rank = hi * ranks_per_host + lr
            env = RankEnv(rank=rank, rank_size=world, device_id=lr, job_dir=job_dir, job_id="bench", attempt=0,
                          host=h.name).to_env()
            specs.append(WorkerSpec(rank=rank, local_rank=lr, device=lr,
                                    argv=(sys.executable, FAKE, "--steps", "1000000", "--step-time", "0.05"),
                                    env=env, host=h.name if remote else "localhost", cwd=str(ROOT)))
    return specs


def one_round(backend, specs, kill_pid_of):
    """Start, wait until all run, kill the last rank, supervise the teardown; then the same for stop."""
    from orchestrator.supervisor import Supervisor, stop_group

    out = {}
    # failure round
    sinks = {s.name: TimingSink() for s in specs}
    t0 = time.monotonic()
    live = backend.start_all(specs, sinks)
    for s in sinks.values():
        if not s.got.wait(60):
            raise RuntimeError("a rank did not start within 60 s")
    out["launch_s"] = max(s.first_event for s in sinks.values()) - t0
    victim = live[specs[-1].name]
    pid = kill_pid_of(victim)
    t_kill = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    res = Supervisor(live, {}, grace=5.0).run()
    out["detect_s"] = res.detected_mono - t_kill
    out["fail_down_s"] = res.detected_mono + res.group_down_s - t_kill
    for h in live.values():
        h.join_output(2.0)
        getattr(h, "close", lambda: None)()
    # stop round
    sinks = {s.name: TimingSink() for s in specs}
    live = backend.start_all(specs, sinks)
    for s in sinks.values():
        s.got.wait(60)
    t1 = time.monotonic()
    stop_group(live, 5.0)
    out["stop_down_s"] = time.monotonic() - t1
    for h in live.values():
        h.join_output(2.0)
        getattr(h, "close", lambda: None)()
    return out


def bench_hosts(n_hosts: int, ranks_per_host: int, repeat: int):
    from sshd import SshdCluster

    from orchestrator.backends.local import LocalBackend
    from orchestrator.backends.ssh import SSHBackend
    from orchestrator.jobspec import JobSpec
    from orchestrator.plan import JobPlan, Placement

    tmp = Path(tempfile.mkdtemp(prefix="pspnet-bench-"))
    rows = {"remote": [], "local": []}
    pre = []
    floor = []
    with SshdCluster(tmp, n_hosts) as cluster:
        hostfile = cluster.write_hostfile(tmp / "hosts.yaml", devices=str(ranks_per_host))
        hosts = cluster.host_specs(devices=str(ranks_per_host))
        job_dir = str(tmp / "job")
        from cluster import ssh
        conn = ssh.connect(hosts[0])
        for _ in range(3):   # one `true` on an open connection: sshd session + the user's shell startup
            floor.append(ssh.run(conn, "true").seconds)
        conn.close()
        spec = JobSpec(devices=str(ranks_per_host), hosts=str(hostfile), job_id="bench", job_dir=job_dir,
                       cwd=str(ROOT), grace=5.0, backend="cpu", launcher="ssh")
        plan = JobPlan(spec=spec, backend="cpu", mode="dynamic", base_argv=[], placements=[
            Placement(rank=i, local_rank=i % ranks_per_host, device=i % ranks_per_host,
                      host=hosts[i // ranks_per_host].name) for i in range(n_hosts * ranks_per_host)])
        for _ in range(repeat):
            with SSHBackend(spec) as backend:
                t = time.monotonic()
                backend.discover()          # connect + probe every host, in parallel
                pre.append(time.monotonic() - t)
                backend.prepare(plan)
                rows["remote"].append(one_round(backend, worker_specs(hosts, ranks_per_host, job_dir, True),
                                                lambda h: h.pid))
            with LocalBackend(spec) as backend:
                rows["local"].append(one_round(backend, worker_specs(hosts, ranks_per_host, job_dir, False),
                                               lambda h: h.pid))
    return pre, rows, med(floor)


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def bench_ranktable(n_servers: int, n_devices: int, repeat: int = 5):
    from cluster.hosts import HostSpec
    from cluster.preflight import server_from_probe
    from cluster.ranktable import build_rank_table, rank_table_json, validate_rank_table

    hosts = [HostSpec(address=f"10.{i // 250}.{i % 250}.1", name=f"node{i}") for i in range(n_servers)]
    # what each host's probe prints (devices with their NIC IPs), as JSON text
    reports = [json.dumps({"server": {"server_id": h.address, "devices": [
        {"device_id": d, "ip": f"192.{(i * n_devices + d) // 65536 % 256}.{(i * n_devices + d) // 256 % 256}."
                               f"{(i * n_devices + d) % 256}", "logical_id": d} for d in range(n_devices)]}})
        for i, h in enumerate(hosts)]
    times = {"merge": [], "build+validate": [], "json": [], "reload+validate": [], "total": []}
    for _ in range(repeat):
        t0 = time.perf_counter()
        servers = [server_from_probe(h, json.loads(r)) for h, r in zip(hosts, reports)]
        t1 = time.perf_counter()
        table = build_rank_table(servers, rules="910")
        t2 = time.perf_counter()
        text = rank_table_json(table)
        t3 = time.perf_counter()
        slots = validate_rank_table(json.loads(text))
        t4 = time.perf_counter()
        assert len(slots) == n_servers * n_devices
        for k, v in (("merge", t1 - t0), ("build+validate", t2 - t1), ("json", t3 - t2),
                     ("reload+validate", t4 - t3), ("total", t4 - t0)):
            times[k].append(v)
    return {k: med(v) for k, v in times.items()}, len(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", default="2,4", help="host counts to measure [2,4]")
    ap.add_argument("--ranks-per-host", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--servers", type=int, default=512)
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--ranktable-only", action="store_true")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs (shared; figures are noisy), python {sys.version.split()[0]}")
    if not args.ranktable_only:
        print(f"\nlaunch over SSH vs local, {args.ranks_per_host} rank(s)/host, median of {args.repeat}:")
        print(f"{'hosts':>5} {'preflight':>10} | {'launch->running':>22} | {'kill->detected':>22} | "
              f"{'kill->group down':>22} | {'stop->group down':>22}")
        print(f"{'':>5} {'':>10} | {'ssh':>7} {'local':>7} {'ratio':>6} | {'ssh':>7} {'local':>7} {'ratio':>6} | "
              f"{'ssh':>7} {'local':>7} {'ratio':>6} | {'ssh':>7} {'local':>7} {'ratio':>6}")
        floors = []
        for n in [int(x) for x in args.hosts.split(",") if x]:
            pre, rows, floor = bench_hosts(n, args.ranks_per_host, args.repeat)
            floors.append(floor)
            cells = []
            for key in ("launch_s", "detect_s", "fail_down_s", "stop_down_s"):
                r = med([x[key] for x in rows["remote"]])
                l = med([x[key] for x in rows["local"]])
                cells.append(f"{r * 1000:6.0f}ms {l * 1000:5.0f}ms {r / l if l else float('nan'):5.1f}x")
            print(f"{n:>5} {med(pre) * 1000:8.0f}ms | " + " | ".join(cells))
        print(f"(one `true` over an open SSH connection takes {med(floors) * 1000:.0f} ms here: sshd's session "
              "setup plus the remote user's shell startup files; every remote start pays it once)")
    res, size = bench_ranktable(args.servers, args.devices)
    print(f"\nrank table, {args.servers} servers x {args.devices} devices ({args.servers * args.devices} ranks, "
          f"{size / 1e6:.1f} MB JSON), median of 5:")
    for k, v in res.items():
        print(f"  {k:<16} {v * 1000:7.1f} ms")
    launch_path = res["merge"] + res["build+validate"]
    print(f"  launch path (merge + build + validate): {launch_path * 1000:.1f} ms; target 100 ms "
          f"{'met' if launch_path < 0.1 else 'MISSED'}; with JSON write and re-validation: "
          f"{res['total'] * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
