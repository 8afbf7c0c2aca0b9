"""Launcher overhead and failure latency, side by side, with the same trivial MindSpore worker.

For N = 2 and 4 ranks (CPU dynamic cluster), one run each of:

- ``bare``: Popen of the scheduler + N workers with the MS_* environment, then wait (the floor);
- ``ours``: ``pspnet-cluster launch --devices N --cmd 'python worker.py'``;
- ``msrun``: ``msrun --worker_num N --local_worker_num N --join True worker.py`` (ships with MindSpore).

The worker imports mindspore, joins the dynamic cluster (``init()``) and exits.  Then the failure
latency: the same worker, but rank 1 exits with code 1 right after ``init()`` while the others sleep;
the figure is the time from that exit (the worker writes its timestamp just before it exits) until the
launcher has brought everything down and returned.

    .venv/bin/python benchmarks/launch.py [--sizes 2,4] [--repeat 1] [--skip-msrun]

Timings on a shared 2-core machine are noisy (MindSpore import dominates); compare the ratios.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
MSRUN = str(Path(PY).parent / "msrun")

WORKER = r'''
import os, sys, time
import mindspore as ms
from mindspore.communication import init, get_rank
ms.set_context(mode=ms.GRAPH_MODE)
ms.set_device("CPU")
init()
rank = get_rank()
mode = sys.argv[1] if len(sys.argv) > 1 else "ok"
if mode == "die":
    if rank == 1:
        with open(sys.argv[2] + ".tmp", "w") as fh:
            fh.write(repr(time.time()))
        os.replace(sys.argv[2] + ".tmp", sys.argv[2])
        os._exit(1)
    time.sleep(600)
print(f"rank {rank} ok", flush=True)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_tree(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_bare(worker: Path, n: int, args: List[str], tmp: Path, timeout: float) -> Tuple[float, Path]:
    logs = tmp / f"bare-{n}-{time.monotonic_ns()}"
    logs.mkdir()
    port = free_port()
    base = dict(os.environ, MS_SCHED_HOST="127.0.0.1", MS_SCHED_PORT=str(port), MS_WORKER_NUM=str(n))
    t0 = time.perf_counter()
    files = [open(logs / f"{name}.log", "w") for name in ["scheduler"] + [f"rank_{r}" for r in range(n)]]
    procs = [subprocess.Popen([PY, str(worker), *args], env=dict(base, MS_ROLE="MS_SCHED"),
                              stdout=files[0], stderr=subprocess.STDOUT, start_new_session=True)]
    for r in range(n):
        procs.append(subprocess.Popen([PY, str(worker), *args],
                                      env=dict(base, MS_ROLE="MS_WORKER", MS_NODE_ID=str(r), RANK_ID=str(r)),
                                      stdout=files[r + 1], stderr=subprocess.STDOUT, start_new_session=True))
    try:
        for p in procs:
            p.wait(timeout)
    finally:
        for p in procs:
            kill_tree(p)
        for f in files:
            f.close()
    return time.perf_counter() - t0, logs


def check_ok(log_dir: Path, n: int, kind: str) -> None:
    """A run only counts when every rank really joined and finished (guards against silent failures)."""
    text = "".join(p.read_text(errors="replace") for p in log_dir.rglob("*.log")) if log_dir.exists() else ""
    got = sum(f"rank {r} ok" in text for r in range(n))
    if got != n:
        raise SystemExit(f"{kind}: only {got} of {n} ranks finished; see {log_dir}")


def run_ours(worker: Path, n: int, args: List[str], tmp: Path, timeout: float) -> Tuple[float, Path]:
    job = tmp / f"ours-{n}-{time.monotonic_ns()}"
    cmd = [PY, "-m", "orchestrator.cli", "launch", "--devices", str(n), "--job-dir", str(job), "--quiet",
           "--grace", "2", "--cmd", " ".join(["python", str(worker), *args])]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    try:
        p.wait(timeout)
    finally:
        kill_tree(p)
    return time.perf_counter() - t0, job / "logs"


def run_msrun(worker: Path, n: int, args: List[str], tmp: Path, timeout: float) -> Tuple[float, Path]:
    logs = tmp / f"msrun-{n}-{time.monotonic_ns()}"
    cmd = [MSRUN, f"--worker_num={n}", f"--local_worker_num={n}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", f"--log_dir={logs}", "--join=True", str(worker), *args]
    t0 = time.perf_counter()
    # msrun starts `python` from PATH: make that this interpreter (the venv's)
    env = dict(os.environ, PATH=str(Path(PY).parent) + os.pathsep + os.environ.get("PATH", ""))
    p = subprocess.Popen(cmd, cwd=str(tmp), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    finally:
        kill_tree(p)
    return time.perf_counter() - t0, logs


def death_latency(kind: str, worker: Path, n: int, tmp: Path, timeout: float) -> Tuple[Optional[float], str]:
    """Seconds from rank 1's exit to the launcher returning, and a note (ours: job.json's figures)."""
    stamp = tmp / f"death-{kind}-{time.monotonic_ns()}"
    args = ["die", str(stamp)]
    fn = run_ours if kind == "ours" else run_msrun
    _t, logs = fn(worker, n, args, tmp, timeout)
    end = time.time()
    note = ""
    if kind == "ours":
        import json
        try:
            a = json.loads((logs.parent / "job.json").read_text())["attempts"][0]
            seen = a["failure"]["at"] - float(stamp.read_text())
            note = f"(death seen after {seen:.3f} s, group down {a['group_down_s']:.3f} s after that)"
        except (OSError, ValueError, KeyError, TypeError):
            pass
    try:
        return end - float(stamp.read_text()), note
    except (OSError, ValueError):
        return None, ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2,4")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--skip-msrun", action="store_true")
    ap.add_argument("--timeout", type=float, default=240.0)
    opts = ap.parse_args()
    sizes = [int(s) for s in opts.sizes.split(",")]
    kinds = ["bare", "ours"] + ([] if opts.skip_msrun else ["msrun"])
    with tempfile.TemporaryDirectory(prefix="pspnet-bench-launch-") as d:
        tmp = Path(d)
        worker = tmp / "trivial_worker.py"
        worker.write_text(WORKER)
        print(f"# launch wall time, trivial MindSpore worker (import + init + exit), {os.cpu_count()} CPUs, "
              f"best of {opts.repeat}")
        print(f"{'N':>3} " + " ".join(f"{k:>9}" for k in kinds) + "   ours/bare" +
              ("  msrun/bare  ours/msrun" if "msrun" in kinds else ""))
        for n in sizes:
            times: Dict[str, float] = {}
            for k in kinds:
                best = float("inf")
                for _ in range(opts.repeat):
                    fn = {"bare": run_bare, "ours": run_ours, "msrun": run_msrun}[k]
                    t, logs = fn(worker, n, ["ok"], tmp, opts.timeout)
                    check_ok(logs, n, k)
                    best = min(best, t)
                times[k] = best
            line = f"{n:>3} " + " ".join(f"{times[k]:>8.2f}s" for k in kinds)
            line += f"   {times['ours'] / times['bare']:>9.2f}"
            if "msrun" in times:
                line += f"  {times['msrun'] / times['bare']:>10.2f}  {times['ours'] / times['msrun']:>10.2f}"
            print(line, flush=True)
        print("\n# rank death -> whole group down and launcher returned (rank 1 exits 1 after init)")
        n = max(2, sizes[0])
        for k in ["ours"] + ([] if opts.skip_msrun else ["msrun"]):
            lat, note = death_latency(k, worker, n, tmp, opts.timeout)
            print(f"{k:>6} N={n}: " + ("no figure (the dying rank never ran)" if lat is None else f"{lat:.3f} s")
                  + (f"  {note}" if note else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
