"""Learning, shown: PSPNet-ResNet50 from random initialisation on generated data, 2 CPU ranks, mIoU per epoch.

    .venv/bin/python benchmarks/learn.py --job-dir runs/learn [--devices 2] [--config synth-learn] [-- KEY=VALUE ...]

Runs ``pspnet-cluster launch --devices 2 --config synth-learn --job-dir DIR`` (a normal supervised job: logs,
events, checkpoints, report), prints one line per epoch as the ranks report it (train loss: mean over the
epoch's steps and ranks; val loss and mIoU: validation summed over the ranks, so both ranks agree), then the
table of the whole run, each rank's best mIoU from ``pspnet-cluster summary DIR --json``, the wall time
and the load average, and whether the goal (mIoU >= 0.7 within 15 minutes) was met.  Exit code: the
launcher's.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GOAL_MIOU = 0.7
GOAL_S = 15 * 60


def read_events(job_dir: Path) -> Dict[int, List[dict]]:
    from cluster.contracts.events import parse_line
    out: Dict[int, List[dict]] = {}
    for path in sorted((job_dir / "events").glob("rank_*.jsonl")):
        rank = int(path.stem.split("_")[1])
        with open(path, "rb") as fh:
            out[rank] = [e for e in (parse_line(line) for line in fh) if e]
    return out


def epoch_rows(events: Dict[int, List[dict]]) -> List[Tuple[int, float, float, float, float]]:
    """(epoch, mean train loss over ranks and steps, val loss, mIoU, seconds since the first rank's start)
    for every epoch that all ranks have reported."""
    starts = [e["ts"] for evs in events.values() for e in evs if e["event"] == "start" and "ts" in e]
    t0 = min(starts) if starts else None
    by_epoch: Dict[int, List[dict]] = {}
    losses: Dict[int, List[float]] = {}
    for evs in events.values():
        for e in evs:
            if e["event"] == "epoch":
                by_epoch.setdefault(int(e["epoch"]), []).append(e)
            elif e["event"] == "step" and e.get("loss") is not None:
                losses.setdefault(int(e["epoch"]), []).append(float(e["loss"]))
    rows = []
    for ep in sorted(by_epoch):
        evs = by_epoch[ep]
        if len(evs) < len(events):
            continue
        val = [e for e in evs if e.get("miou") is not None]
        ts = max(e.get("ts", 0) for e in evs)
        rows.append((ep, sum(losses.get(ep, [0.0])) / max(len(losses.get(ep, [])), 1),
                     val[0]["val_loss"] if val else float("nan"), val[0]["miou"] if val else float("nan"),
                     ts - t0 if t0 else float("nan")))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job-dir", required=True, help="job directory to create (must not hold a job)")
    ap.add_argument("--devices", default="2")
    ap.add_argument("--config", default="synth-learn")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="trainer config overrides")
    args = ap.parse_args()
    job_dir = Path(args.job_dir).resolve()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "orchestrator.cli", "launch", "--devices", str(args.devices), "--config",
           args.config, "--job-dir", str(job_dir), "--quiet"]
    if args.overrides:
        cmd += ["--", *args.overrides]
    load0 = os.getloadavg()
    print(f"$ {' '.join(cmd[2:])}\nload average at start {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} "
          f"on {os.cpu_count()} cores", flush=True)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    shown = 0
    print(f"{'epoch':>5} {'train loss':>10} {'val loss':>9} {'mIoU':>7} {'time s':>7}", flush=True)
    while True:
        done = proc.poll() is not None
        rows = epoch_rows(read_events(job_dir)) if (job_dir / "events").is_dir() else []
        for ep, tl, vl, miou, ts in rows[shown:]:
            print(f"{ep:5d} {tl:10.4f} {vl:9.4f} {miou:7.4f} {ts:7.0f}", flush=True)
        shown = max(shown, len(rows))
        if done:
            break
        time.sleep(5)
    wall = time.monotonic() - t0
    load1 = os.getloadavg()
    summ = subprocess.run([sys.executable, "-m", "orchestrator.cli", "summary", str(job_dir), "--json"], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    best: Dict[str, float] = {}
    try:
        for job in json.loads(summ.stdout)["jobs"]:
            devices = job.get("devices", {})
            for key, dev in (devices.items() if isinstance(devices, dict) else enumerate(devices)):
                best[str(dev.get("rank", key))] = dev.get("best_miou")
    except (ValueError, KeyError, TypeError):
        print(f"summary --json gave no readable JSON: {summ.stderr.strip()[-500:]}", flush=True)
    rows = epoch_rows(read_events(job_dir))
    reached = [ts for _, _, _, miou, ts in rows if miou == miou and miou >= GOAL_MIOU]
    print(f"\n| epoch | train loss | val loss | mIoU | s since start |\n|---|---|---|---|---|")
    for ep, tl, vl, miou, ts in rows:
        print(f"| {ep} | {tl:.3f} | {vl:.3f} | {miou:.4f} | {ts:.0f} |")
    print(f"\nbest mIoU per rank (summary --json): {best}")
    print(f"launcher exit {proc.returncode}, wall {wall:.0f} s, load average at start {load0[0]:.2f}, "
          f"at end {load1[0]:.2f} (1 min) {load1[1]:.2f} (5 min) {load1[2]:.2f} (15 min)")
    if reached:
        print(f"goal: mIoU >= {GOAL_MIOU} reached {reached[0]:.0f} s after start "
              f"({'within' if reached[0] <= GOAL_S else 'NOT within'} {GOAL_S // 60} minutes)")
    else:
        print(f"goal: mIoU >= {GOAL_MIOU} NOT reached (best {max((r[3] for r in rows), default=float('nan')):.4f})")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
