"""Benchmark: the cost of one Prometheus scrape of the exporter, and its CPU share beside a live job.

    .venv/bin/python benchmarks/scrape.py                     # 8, 128 and 1024 devices; CPU share at 8 ranks, 20 s
    .venv/bin/python benchmarks/scrape.py --devices 8 128 --duration 10
    .venv/bin/python benchmarks/scrape.py --before DIR        # the tree at DIR first, then this one

1. Scrape time.  A job dir with N ranks (events/rank_<R>.jsonl, ``--history`` step events each) is
   served by ``monitoring.exporter.serve`` (the standalone exporter).  Before each scrape every rank
   gets one new step event (a live job scraped once per step) and the exporter reads it: an exporter
   that follows the files in the background is polled once (the "poll" column; its thread would do
   it within a poll interval), one that reads on each request does it inside the scrape.  Then
   ``GET /metrics`` is timed end to end with a new connection per request (urllib) and over one
   kept-alive connection (what Prometheus does), and the same without HTTP (``Exporter.metrics_text()``).
   The same state is timed piece by piece, and the exporter's renderer side by side with
   prometheus_client's ``generate_latest`` over the same collectors.
2. CPU share.  8 ranks emit step events at ``--step-time`` seconds a step from a separate process;
   another process plays Prometheus (GET /metrics every ``--scrape-interval`` s) and the web
   dashboard (GET /api/state every 1.5 s).  The exporter runs in this process in its background
   threads; its CPU seconds per wall second are this process's CPU time over the run (the writer and
   scraper are other processes and are not counted).

Figures are wall-clock/CPU on whatever machine runs it; on a shared machine they are noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# --code DIR: measure the monitoring package of another tree (e.g. `git worktree add DIR <commit>`)
# with this same script, so figures before and after a change come from one procedure
CODE = Path(sys.argv[sys.argv.index("--code") + 1]).resolve() if "--code" in sys.argv[:-1] else ROOT
sys.path.insert(0, str(CODE))

import http.client  # noqa: E402

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402

import monitoring.exporter as exporter  # noqa: E402
from monitoring.exporter import serve  # noqa: E402
from monitoring.synthetic import step_lines  # noqa: E402

#: The exporter follows files in a background thread (else it reads them on each request).
FOLLOWS = hasattr(exporter, "FollowedJobs")


def make_job(root: Path, ranks: int, history: int, job: str):
    (root / "events").mkdir(parents=True)
    (root / "job.json").write_text(json.dumps({"job_id": job, "state": "running", "spec": {}, "world_size": ranks,
                                               "attempts": [{"attempt": 0, "state": "running"}]}))
    gens = {r: step_lines(r, 10 ** 12, world_size=ranks, job=job, step_time_s=0.5 * (1.3 if r == 1 else 1.0))
            for r in range(ranks)}
    for r in range(ranks):
        with open(root / "events" / f"rank_{r}.jsonl", "w") as fh:
            fh.writelines(next(gens[r]) for _ in range(history))
    return gens


def append_one_step(root: Path, gens, ranks=None) -> None:
    for r, g in gens.items():
        if ranks is not None and r not in ranks:
            continue
        with open(root / "events" / f"rank_{r}.jsonl", "a") as fh:
            fh.write(next(g))


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f}"


def bench_scrape(n: int, history: int, repeat: int, tmp: Path) -> dict:
    root = tmp / f"job{n}"
    gens = make_job(root, n, history, f"bench{n}")
    time.sleep(1.1)      # a live job's files exist long before it is scraped
    if FOLLOWS:          # polled by hand below, so that every timed scrape shows the new step
        srv = serve(root, port=0, npu_reader=None, poll_interval_s=3600.0)
    else:
        srv = serve(root, port=0, npu_reader=None, min_refresh_s=0.0)
    try:
        url = srv.url + "/metrics"
        body = urllib.request.urlopen(url, timeout=120).read()          # first scrape reads the history
        conn = http.client.HTTPConnection(srv.host, srv.port, timeout=120)

        def refresh() -> float:
            t0 = time.perf_counter()
            if FOLLOWS:
                srv.source.poll()
            return time.perf_counter() - t0

        total, keep, server, poll, snap, fam, rend, latest = [], [], [], [], [], [], [], []
        for _ in range(repeat):
            append_one_step(root, gens)
            poll.append(refresh())
            t0 = time.perf_counter()
            body = urllib.request.urlopen(url, timeout=120).read()
            total.append(time.perf_counter() - t0)
            append_one_step(root, gens)
            refresh()
            t0 = time.perf_counter()
            conn.request("GET", "/metrics")
            conn.getresponse().read()
            keep.append(time.perf_counter() - t0)
            # the same request without HTTP: what the exporter computes per scrape
            append_one_step(root, gens)
            refresh()
            t0 = time.perf_counter()
            srv.metrics_text()
            server.append(time.perf_counter() - t0)
            # piece by piece: the summaries, the collectors' families, the rendering, generate_latest
            append_one_step(root, gens)
            refresh()
            if FOLLOWS:
                m = srv.metrics
                t1 = time.perf_counter()
                jobs = srv.source(full=False)
                t2 = time.perf_counter()
                m.source = lambda: jobs
                families = m.families()
                t3 = time.perf_counter()
                m.render(families)
                t4 = time.perf_counter()
                generate_latest(m.registry)
                t5 = time.perf_counter()
                m.source = lambda: srv.source(full=False)
            else:
                mon = srv.source.monitors[0]
                mon.poll()
                t1 = time.perf_counter()
                summary = mon.summary()
                t2 = time.perf_counter()
                srv.collector.source = lambda: [summary]
                families = srv.collector.families()
                t3 = time.perf_counter()
                srv.renderer.render(families)
                t4 = time.perf_counter()
                reg = CollectorRegistry()
                reg.register(srv.collector)
                generate_latest(reg)
                t5 = time.perf_counter()
                srv.collector.source = srv.source
            snap.append(t2 - t1)
            fam.append(t3 - t2)
            rend.append(t4 - t3)
            latest.append(t5 - t4)
        # a quieter scrape: only 8 ranks got a new step since the last one
        few = []
        for _ in range(repeat):
            append_one_step(root, gens, ranks=set(range(min(8, n))))
            refresh()
            t0 = time.perf_counter()
            urllib.request.urlopen(url, timeout=120).read()
            few.append(time.perf_counter() - t0)
        conn.close()
        return {"devices": n, "bytes": len(body), "lines": body.count(b"\n"), "few_s": statistics.median(few),
                "scrape_s": statistics.median(total), "scrape_min_s": min(total),
                "keepalive_s": statistics.median(keep), "server_s": statistics.median(server),
                "poll_s": statistics.median(poll), "snapshot_s": statistics.median(snap),
                "collector_s": statistics.median(fam), "render_s": statistics.median(rend),
                "generate_latest_s": statistics.median(latest)}
    finally:
        srv.close()
        shutil.rmtree(root, ignore_errors=True)


WRITER = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from monitoring.synthetic import step_lines
root, ranks, step_time, duration = sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
gens = {r: step_lines(r, 10**12, world_size=ranks, job="live", step_time_s=step_time, t0=time.time()) for r in range(ranks)}
fhs = {r: open(f"{root}/events/rank_{r}.jsonl", "a", buffering=1) for r in range(ranks)}
end = time.time() + duration
n = 0
while time.time() < end:
    for r in range(ranks):
        fhs[r].write(next(gens[r]))
        n += 1
    time.sleep(step_time)
print(n)
"""

SCRAPER = r"""
import sys, time, urllib.request
url, interval, duration = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
end = time.time() + duration
next_m = next_s = time.time()
n = 0
while time.time() < end:
    now = time.time()
    if now >= next_m:
        urllib.request.urlopen(url + "/metrics", timeout=30).read(); n += 1; next_m += interval
    if now >= next_s:
        urllib.request.urlopen(url + "/api/state", timeout=30).read(); n += 1; next_s += 1.5
    time.sleep(0.05)
print(n)
"""


def bench_cpu_share(ranks: int, duration: float, step_time: float, scrape_interval: float, tmp: Path) -> dict:
    root = tmp / "live"
    make_job(root, ranks, 100, "live")
    srv = serve(root, port=0, npu_reader=None,
                process_stats=lambda: {r: {"pid": 1000 + r, "cpu_seconds": 1.0, "rss_bytes": 1e9} for r in range(ranks)})
    try:
        urllib.request.urlopen(srv.url + "/metrics", timeout=60).read()     # read the history first
        t = os.times()
        cpu0, wall0 = t.user + t.system, time.perf_counter()
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(ROOT), str(root), str(ranks), str(step_time),
                                   str(duration)], stdout=subprocess.PIPE, text=True)
        scraper = subprocess.Popen([sys.executable, "-c", SCRAPER, srv.url, str(scrape_interval), str(duration)],
                                   stdout=subprocess.PIPE, text=True)
        events = int(writer.communicate(timeout=duration + 60)[0].strip() or 0)
        requests = int(scraper.communicate(timeout=duration + 60)[0].strip() or 0)
        t = os.times()
        cpu, wall = t.user + t.system - cpu0, time.perf_counter() - wall0
        return {"ranks": ranks, "wall_s": wall, "cpu_s": cpu, "share": cpu / wall, "events": events,
                "requests": requests, "per_request_ms": 1000 * cpu / max(1, requests)}
    finally:
        srv.close()
        shutil.rmtree(root, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, nargs="+", default=[8, 128, 1024])
    ap.add_argument("--history", type=int, default=200, help="step events per rank before timing (default 200)")
    ap.add_argument("--repeat", type=int, default=5, help="timed scrapes per size (median reported)")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of the CPU-share run (0 skips it)")
    ap.add_argument("--ranks", type=int, default=8, help="ranks of the CPU-share run (default 8)")
    ap.add_argument("--step-time", type=float, default=0.5, help="seconds per step of each rank (default 0.5)")
    ap.add_argument("--scrape-interval", type=float, default=1.0, help="Prometheus scrape interval (default 1 s)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    ap.add_argument("--code", default=None, help="root of the tree whose monitoring package is measured (default: this one)")
    ap.add_argument("--before", default=None, metavar="DIR",
                    help="measure the tree at DIR first (same options), then this one: old and new side by side")
    args = ap.parse_args(argv)
    if args.before:
        rest = [a for i, a in enumerate(sys.argv[1:]) if a != "--before" and sys.argv[i] != "--before"]
        print(f"==== before: {args.before}", flush=True)
        subprocess.run([sys.executable, __file__, *rest, "--code", args.before], check=False)
        print(f"==== after: {CODE}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="pspnet-scrape-"))
    results = {"scrape": [], "cpu": None, "cpus": os.cpu_count(), "load": os.getloadavg()}
    try:
        print(f"one /metrics scrape after one new step per rank (median of {args.repeat}; ms; load avg "
              f"{results['load'][0]:.1f} on {results['cpus']} CPUs)")
        print(f"code: {CODE}")
        print(f"{'devices':>8} {'scrape':>8} {'min':>8} {'keepalv':>8} {'8 new':>8} {'no HTTP':>8} | {'poll':>8} {'snapshot':>8} "
              f"{'collect':>8} {'render':>8} | {'gen_latest':>10} {'ratio':>6} | {'lines':>7} {'bytes':>9}")
        for n in args.devices:
            r = bench_scrape(n, args.history, args.repeat, tmp)
            results["scrape"].append(r)
            ours = r["collector_s"] + r["render_s"]
            print(f"{n:8d} {ms(r['scrape_s'])} {ms(r['scrape_min_s'])} {ms(r['keepalive_s'])} {ms(r['few_s'])} "
                  f"{ms(r['server_s'])} | {ms(r['poll_s'])} {ms(r['snapshot_s'])} {ms(r['collector_s'])} "
                  f"{ms(r['render_s'])} | {ms(r['generate_latest_s']):>10} {r['generate_latest_s'] / ours:5.1f}x | "
                  f"{r['lines']:7d} {r['bytes']:9d}", flush=True)
        print("  scrape = GET /metrics end to end, a new connection each (urllib); keepalv = over one kept-alive "
              "connection; 8 new = scrape when only 8 ranks got a new step; no HTTP = metrics_text() alone; poll = "
              "the background read of the new bytes (" + ("not part of a scrape" if FOLLOWS else "inside each scrape")
              + "); snapshot = aggregation; collect + render = this exporter; gen_latest = prometheus_client's "
              "generate_latest instead of the renderer (ratio = gen_latest / (collect+render))")
        if args.duration > 0:
            c = bench_cpu_share(args.ranks, args.duration, args.step_time, args.scrape_interval, tmp)
            results["cpu"] = c
            print(f"\nsupervisor-side exporter CPU at {c['ranks']} ranks, one step per {args.step_time} s each, "
                  f"/metrics every {args.scrape_interval} s + /api/state every 1.5 s:")
            print(f"  {c['cpu_s']:.2f} CPU s in {c['wall_s']:.1f} s wall = {100 * c['share']:.2f} % of one core "
                  f"({c['events']} events, {c['requests']} requests, {c['per_request_ms']:.1f} CPU ms/request)")
        if args.json:
            print(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
