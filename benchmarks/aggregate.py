"""Benchmark: parsing + aggregating event files, and the cost of one incremental pass.

    .venv/bin/python benchmarks/aggregate.py                 # 8 ranks x 1,000,000 event lines
    .venv/bin/python benchmarks/aggregate.py --lines 200000  # smaller
    .venv/bin/python benchmarks/aggregate.py --before DIR    # the tree at DIR first, then this one

Writes ``--ranks`` files events/rank_<R>.jsonl of ``--lines`` EventWriter-formatted lines each (mostly
step events, an epoch event every 1000 steps; ~290 bytes a line; a block of ``--distinct`` generated
lines repeated, since generating is slower than reading) into a temporary job dir, then:

1. full pass: a JobMonitor reads every file from the start and a snapshot is taken -> lines/s
   (target >= 1M lines/s);
2. side by side on a sample: the contract's ``parse_line`` (json.loads) + ``Aggregator.feed_event``
   per line, and parsing alone with orjson (the least any reader that parses every line spends);
3. incremental pass: 1,000 new lines appended (spread over the ranks), then poll() + snapshot();
   median and max over ``--repeat`` passes.

Figures are wall-clock on whatever machine runs it; on a shared machine they are noisy.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

# --code DIR: measure the monitoring package of another tree (e.g. `git worktree add DIR <commit>`)
# with this same script, so figures before and after a change come from one procedure
CODE = (Path(sys.argv[sys.argv.index("--code") + 1]) if "--code" in sys.argv[:-1]
        else Path(__file__).resolve().parent.parent).resolve()
sys.path.insert(0, str(CODE))

from monitoring.aggregate import Aggregator  # noqa: E402
try:
    from monitoring.sources import JobMonitor  # noqa: E402
except ImportError:        # a tree where the aggregator module follows the files itself
    from monitoring.aggregate import JobMonitor  # noqa: E402
from cluster.contracts.events import parse_line  # noqa: E402
from monitoring.summary import read_all  # noqa: E402
from monitoring.synthetic import step_lines  # noqa: E402


def make_rank_file(template: bytes, rank: int, path: Path) -> None:
    data = template.replace(b'"rank":0,', b'"rank":%d,' % rank).replace(b'"device":0,', b'"device":%d,' % rank)
    path.write_bytes(data)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=8)
    ap.add_argument("--lines", type=int, default=1_000_000, help="event lines per rank")
    ap.add_argument("--distinct", type=int, default=50_000,
                    help="distinct lines generated; the file repeats this block (generation is slow, not timed)")
    ap.add_argument("--baseline-lines", type=int, default=200_000, help="lines for the line-by-line baseline")
    ap.add_argument("--new-lines", type=int, default=1000, help="lines appended per incremental pass (all ranks)")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--dir", default=None, help="where to write the files (default: a temp dir, removed after)")
    ap.add_argument("--code", default=None, help="root of the tree whose monitoring package is measured (default: this one)")
    ap.add_argument("--before", default=None, metavar="DIR",
                    help="measure the tree at DIR first (same options), then this one: old and new side by side")
    args = ap.parse_args()
    if args.before:
        import subprocess
        rest = [a for i, a in enumerate(sys.argv[1:]) if a != "--before" and sys.argv[i] != "--before"]
        print(f"==== before: {args.before}", flush=True)
        subprocess.run([sys.executable, __file__, *rest, "--code", args.before], check=False)
        print(f"==== after: {CODE}", flush=True)

    root = Path(args.dir or tempfile.mkdtemp(prefix="pspnet-bench-agg-"))
    events = root / "events"
    events.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        distinct = min(args.distinct, args.lines)
        block = "".join(step_lines(0, distinct, world_size=args.ranks)).encode()
        reps, rest = divmod(args.lines, distinct)
        template = block * reps + b"".join(block.splitlines(keepends=True)[:rest])
        for r in range(args.ranks):
            make_rank_file(template, r, events / f"rank_{r}.jsonl")
        total_lines = args.ranks * args.lines
        total_bytes = sum(p.stat().st_size for p in events.glob("*.jsonl"))
        print(f"code: {CODE}; load avg {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"generated {args.ranks} ranks x {args.lines:,} lines = {total_lines:,} lines, "
              f"{total_bytes / 1e6:.0f} MB in {time.perf_counter() - t:.1f} s (not timed below)")

        # 1. full pass (tailer reads + fast chunk path + snapshot)
        mon = JobMonitor([root])
        t = time.perf_counter()
        read_all(mon)
        summary = mon.summary()
        full_s = time.perf_counter() - t
        seen = sum(d.steps_seen for d in summary.devices.values())
        full_rate = total_lines / full_s
        print(f"full pass:        {full_s:7.2f} s  {full_rate / 1e6:6.2f} M lines/s  "
              f"({total_bytes / full_s / 1e6:.0f} MB/s; {seen:,} steps aggregated over {len(summary.devices)} "
              f"devices)")

        # 2. baseline: one json.loads per line
        sample = template[: template.find(b"\n", len(template) * min(args.baseline_lines, args.lines)
                                          // args.lines - 1) + 1]
        lines = sample.split(b"\n")
        agg = Aggregator()
        t = time.perf_counter()
        n = 0
        for line in lines:
            if line:
                ev = parse_line(line)
                if ev is not None:
                    agg.feed_event(ev)
                n += 1
        agg.snapshot()
        base_s = time.perf_counter() - t
        base_rate = n / base_s
        print(f"line-by-line:     {base_s:7.2f} s  {base_rate / 1e6:6.2f} M lines/s  on {n:,} lines "
              f"(parse_line + feed_event)   -> full pass is {full_rate / base_rate:.1f}x")
        try:
            import orjson
            t = time.perf_counter()
            for line in lines:
                if line:
                    orjson.loads(line)
            parse_s = time.perf_counter() - t
            print(f"orjson parse only:{parse_s:7.2f} s  {n / parse_s / 1e6:6.2f} M lines/s  on {n:,} lines "
                  f"(the ceiling of a reader that parses every line; full pass = {full_rate * parse_s / n:.0%} of it)")
        except ImportError:
            pass

        # 3. incremental passes: append new lines to every rank, then poll + snapshot
        per_rank = max(1, args.new_lines // args.ranks)
        new = {r: "".join(step_lines(r, per_rank * args.repeat, world_size=args.ranks, seed=7)).encode()
               for r in range(args.ranks)}
        splits = {r: new[r].split(b"\n") for r in new}
        costs = []
        for i in range(args.repeat):
            for r in range(args.ranks):
                part = b"\n".join(splits[r][i * per_rank:(i + 1) * per_rank]) + b"\n"
                with open(events / f"rank_{r}.jsonl", "ab") as fh:
                    fh.write(part)
            t = time.perf_counter()
            got = mon.poll()
            mon.summary()
            costs.append(time.perf_counter() - t)
            assert got == per_rank * args.ranks, got
        print(f"incremental pass: {per_rank * args.ranks:,} new lines over {args.ranks} ranks: poll+snapshot "
              f"median {statistics.median(costs) * 1e3:.2f} ms, max {max(costs) * 1e3:.2f} ms "
              f"({args.repeat} passes)")
        print(f"target >= 1M lines/s: {'met' if full_rate >= 1e6 else 'NOT met'} ({full_rate / 1e6:.2f} M lines/s)")
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
