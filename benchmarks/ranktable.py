"""Rank-table generation and validation for a large simulated cluster (default 512 servers x 8 devices).

Prints the median (and min/max) of several runs for each phase and the total against the 100 ms target:
  build     Server objects -> validated rank table dict (build_rank_table: every rule checked)
  dump      dict -> JSON text (what write_rank_table writes)
  load      JSON text -> dict -> validate_rank_table (what load_rank_table does, minus the file read)

    .venv/bin/python benchmarks/ranktable.py [--servers 512] [--devices 8] [--runs 15] [--format 1.0|1.2]

Timings on a shared machine are noisy; the median of several runs is reported for that reason.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cluster.devices import Device, Server  # noqa: E402
from cluster.ranktable import build_rank_table, rank_table_json, validate_rank_table  # noqa: E402

TARGET_MS = 100.0


def make_servers(n_servers: int, n_devices: int, version: str):
    servers = []
    for s in range(n_servers):
        devs = tuple(Device(device_id=d, ip=f"10.{(s >> 8) & 255}.{s & 255}.{d + 1}",
                            super_device_id=(s * n_devices + d) if version == "1.2" else None)
                     for d in range(n_devices))
        servers.append(Server(server_id=f"172.{16 + (s >> 16)}.{(s >> 8) & 255}.{s & 255}", devices=devs,
                              super_pod_id=str(s // 48) if version == "1.2" else None))
    return servers


def timed(fn, runs: int):
    """-> ([wall ms], [cpu ms], last result).  CPU time (this process) is shown beside wall time because
    on a shared machine wall time mostly measures the other processes."""
    wall, cpu = [], []
    result = None
    for _ in range(runs):
        c0, t0 = time.process_time(), time.perf_counter()
        result = fn()
        wall.append((time.perf_counter() - t0) * 1000.0)
        cpu.append((time.process_time() - c0) * 1000.0)
    return wall, cpu, result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", type=int, default=512)
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--format", dest="fmt", choices=("1.0", "1.2"), default="1.0")
    args = ap.parse_args(argv)
    rules = "910" if args.fmt == "1.0" else "a3"
    servers = make_servers(args.servers, args.devices, args.fmt)
    build_w, build_c, table = timed(lambda: build_rank_table(servers, args.fmt, rules), args.runs)
    dump_w, dump_c, text = timed(lambda: rank_table_json(table), args.runs)
    load_w, load_c, slots = timed(lambda: validate_rank_table(json.loads(text), "bench", rules), args.runs)
    assert len(slots) == args.servers * args.devices
    assert text == json.dumps(table, indent=4) + "\n"   # the fast writer is the json module's layout
    ref_w, ref_c, _ = timed(lambda: json.dumps(table, indent=4), args.runs)
    total_w = [a + b + c for a, b, c in zip(build_w, dump_w, load_w)]
    total_c = [a + b + c for a, b, c in zip(build_c, dump_c, load_c)]
    ranks = args.servers * args.devices
    try:
        load = "load average %.1f on %d cores" % (os.getloadavg()[0], os.cpu_count() or 1)
    except OSError:
        load = ""
    print(f"rank table {args.fmt}: {args.servers} servers x {args.devices} devices = {ranks} ranks, "
          f"{len(text) / 1e6:.2f} MB JSON, {args.runs} runs, python {sys.version.split()[0]}, {load}")
    print(f"  {'':<16}{'wall median':>12} {'wall min':>9} {'wall max':>9} {'cpu median':>11}")
    for name, w, c in (("build+validate", build_w, build_c), ("dump json", dump_w, dump_c),
                       ("load+validate", load_w, load_c), ("total", total_w, total_c),
                       ("(json indent=4)", ref_w, ref_c)):
        print(f"  {name:<16}{statistics.median(w):9.1f} ms {min(w):9.1f} {max(w):9.1f} "
              f"{statistics.median(c):8.1f} ms")
    med_w, med_c = statistics.median(total_w), statistics.median(total_c)
    print(f"  target {TARGET_MS:.0f} ms: total is {med_w / TARGET_MS:.2f}x the target in wall time "
          f"({'met' if med_w < TARGET_MS else 'NOT met'}), {med_c / TARGET_MS:.2f}x in CPU time "
          f"({'met' if med_c < TARGET_MS else 'NOT met'}); fast writer vs json indent=4: "
          f"{statistics.median(ref_c) / max(statistics.median(dump_c), 1e-9):.1f}x faster (cpu)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
