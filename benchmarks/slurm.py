"""What the Slurm launcher costs on top of plain ``srun``, side by side in one allocation.

Two figures, each for ours (``pspnet-cluster launch --launcher slurm``: CLI, plan, probe step, attempt
step with a task wrapper per rank) and for plain ``srun --kill-on-bad-exit=1`` starting the same worker:

- launch -> every rank running: from starting the command to the last rank's READY line
  (the worker imports MindSpore first with ``--mindspore``, as a trainer would);
- rank death -> every task gone: rank 3 gets SIGKILL; until no rank process is left on any node.

It starts a real two-node Slurm on this machine (tests/slurm.py; needs root and ./setup.sh --test),
takes one allocation (2 nodes x 2 tasks) and runs both variants in it, alternating, ``--repeat`` times.
Goal: ours adds less than 0.5 s to either figure.

    .venv/bin/python benchmarks/slurm.py                 # trivial worker (no MindSpore), 3 rounds
    .venv/bin/python benchmarks/slurm.py --mindspore     # the worker imports MindSpore first
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORKER = """\
import os, sys, time
if os.environ.get("MS_ROLE") == "MS_SCHED":
    sys.exit(0)
if "--mindspore" in sys.argv:
    import mindspore  # noqa: F401
rank = os.environ.get("RANK_ID", os.environ.get("SLURM_PROCID"))
print(f"READY {rank} {os.getpid()}", flush=True)
time.sleep(600)
"""
RANKS = 4


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pids: List[int], timeout: float = 60.0) -> float:
    t0 = time.monotonic()
    while any(_alive(p) for p in pids):
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"ranks {pids} still alive after {timeout:g} s")
        time.sleep(0.002)
    return time.monotonic()


def plain_round(worker: str, extra: List[str]) -> Dict[str, float]:
    t0 = time.monotonic()
    proc = subprocess.Popen(["srun", "--nodes=2", f"--ntasks={RANKS}", "--ntasks-per-node=2", "--kill-on-bad-exit=1",
                             "--label", "--mpi=none", sys.executable, worker, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    pids: Dict[int, int] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        body = line.split(":", 1)[-1].split()
        if body and body[0] == "READY":
            pids[int(body[1])] = int(body[2])
            if len(pids) == RANKS:
                break
    return _kill_last_rank(proc, pids, time.monotonic() - t0)


def _kill_last_rank(proc: subprocess.Popen, pids: Dict[int, int], running_s: float) -> Dict[str, float]:
    """SIGKILL the last rank and time until every rank is gone: the same measure for srun and for us."""
    t1 = time.monotonic()
    os.kill(pids[RANKS - 1], signal.SIGKILL)
    gone = _wait_gone(list(pids.values())) - t1
    proc.wait(60)
    return {"running_s": running_s, "death_s": gone}


def ours_round(worker: str, extra: List[str], work: Path, n: int) -> Dict[str, float]:
    job = work / f"ours-{n}"
    cmd = " ".join([sys.executable, worker, *extra])
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "launch", "--launcher", "slurm", "--devices", "2",
                             "--cmd", cmd, "--job-dir", str(job), "--quiet", "--no-report", "--failure-grace", "0.3"],
                            cwd=str(work), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids: Dict[int, int] = {}
    deadline = time.monotonic() + 300
    while len(pids) < RANKS:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"launcher ended (code {proc.returncode}) before every rank ran; see {job}/logs")
        for r in range(RANKS):
            if r in pids:
                continue
            try:
                for line in (job / "logs" / f"rank_{r}.log").read_text().splitlines():
                    if line.startswith("READY "):
                        pids[r] = int(line.split()[2])
            except OSError:
                pass
        time.sleep(0.002)
    return _kill_last_rank(proc, pids, time.monotonic() - t0)


def inside(args: argparse.Namespace) -> int:
    work = Path(args.work)
    worker = str(work / "worker.py")
    Path(worker).write_text(WORKER)
    extra = ["--mindspore"] if args.mindspore else []
    rows: Dict[str, List[Dict[str, float]]] = {"plain": [], "ours": []}
    for n in range(args.repeat):
        order = ("plain", "ours") if n % 2 == 0 else ("ours", "plain")
        for which in order:
            r = plain_round(worker, extra) if which == "plain" else ours_round(worker, extra, work, n)
            rows[which].append(r)
            print(f"round {n} {which:5s}: running {r['running_s']:.3f} s, death -> all gone {r['death_s']:.3f} s",
                  flush=True)
            time.sleep(1.0)    # let slurmd finish cleaning up the step
    print("RESULT " + json.dumps(rows), flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--mindspore", action="store_true", help="the worker imports MindSpore before READY")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inside:
        return inside(args)
    sys.path.insert(0, str(ROOT / "tests"))
    from slurm import SlurmCluster   # tests/slurm.py
    work = Path(tempfile.mkdtemp(prefix="pspnet-slurm-bench."))
    with SlurmCluster() as cluster:
        env = cluster.env()
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        argv = ["salloc", "--nodes=2", "--ntasks-per-node=2", sys.executable, str(Path(__file__).resolve()),
                "--inside", "--work", str(work), "--repeat", str(args.repeat)] + (["--mindspore"] if args.mindspore else [])
        res = subprocess.run(argv, env=env, cwd=str(work), text=True, stdout=subprocess.PIPE, timeout=3600)
    sys.stdout.write("\n".join(l for l in res.stdout.splitlines() if not l.startswith("RESULT ")) + "\n")
    result = next((json.loads(l[7:]) for l in res.stdout.splitlines() if l.startswith("RESULT ")), None)
    if result is None:
        print(f"benchmark failed (salloc exit {res.returncode}); work dir {work}")
        return 1
    import shutil
    shutil.rmtree(work, ignore_errors=True)
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("running_s", "death_s")} for k, v in result.items()}
    load = os.getloadavg()
    print(f"\nworker: {'imports MindSpore' if args.mindspore else 'trivial (no MindSpore)'}; 2 nodes x 2 ranks; "
          f"{args.repeat} rounds; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    print(f"{'':28s} {'plain srun':>12s} {'pspnet-cluster':>15s} {'added':>8s}")
    for m, label in (("running_s", "launch -> every rank running"), ("death_s", "rank death -> all tasks gone")):
        a, b = med["plain"][m], med["ours"][m]
        print(f"{label:28s} {a:11.3f}s {b:14.3f}s {b - a:+7.3f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
