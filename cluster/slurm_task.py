"""What each Slurm task of a pspnet-cluster step runs (``python -S .../cluster/slurm_task.py ...``).

The launcher starts one ``srun`` step per attempt; every task of it runs ``run``, which turns the
task's Slurm identity (SLURM_PROCID, SLURM_LOCALID, SLURMD_NODENAME) into the rank the plan gave it:
it reads the attempt file the launcher wrote into the shared job dir (``slurm/attempt_<N>.json``:
argv, env and cwd of each rank, and of the dynamic cluster's scheduler), checks that Slurm put the
task on the node the plan expects, and starts the rank as its child with that environment, so a rank
sees the same environment as under the other launchers.  Task 0 also starts the scheduler.

The child stays in the task's process group (Slurm tracks and signals a step's processes by group or
cgroup, so a step's SIGTERM/SIGKILL reaches the rank directly) and dies with the task (PDEATHSIG).
Output: stdout and stderr of the rank go to the task's stdout, which ``srun --label`` prefixes with
the task id for the launcher.  Control lines for the launcher start with ``CONTROL``:

    @@pspnet-slurm pid <pid> <node> <step id>     the rank's process exists
    @@pspnet-slurm exit <code> [signalled]        the rank ended (subprocess code: -9 = SIGKILL);
                                                  "signalled": Slurm sent the task SIGTERM/SIGINT first
    @@pspnet-slurm stats <cpu seconds> <rss bytes> the rank's process tree, every STATS_EVERY seconds
    @@pspnet-slurm sched <line>                   a line of the scheduler's output (task 0)
    @@pspnet-slurm sched-pid <pid> / sched-exit <code>

The task exits with the rank's status (128 + signal for a signal), so a failed rank fails the task
and ``srun --kill-on-bad-exit`` takes the whole step down.

``probe`` (one task per node, before anything starts) reports the node: its name, whether it sees the
job dir (a token file the launcher wrote), the Python and the devices it would use, as one
``@@pspnet-slurm probe {json}`` line.

The launcher runs it by path with ``python -S`` (no site-packages), and it imports only the standard
library and cluster/proc.py (cluster/devices.py for an accelerator probe; not even
``argparse`` for ``run``), so a task adds little more than a bare interpreter's start-up to each
rank's start.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

if __name__ == "__main__" and __package__ in (None, ""):
    # run by path with ``python -S`` (no site: the interpreter starts in a fraction of the time); the
    # checkout's root makes ``cluster`` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cluster.proc import child_setup, pump_lines  # noqa: E402

CONTROL = "@@pspnet-slurm "
#: seconds between two CPU/memory reports of a rank (the launcher's metrics exporter shows them)
STATS_EVERY = 5.0

_write_lock = threading.Lock()


def emit(text: str) -> None:
    """One whole line on stdout in one write (lines of the rank and the scheduler never mix)."""
    data = (text + "\n").encode("utf-8", errors="replace")
    with _write_lock:
        while data:
            n = os.write(1, data)
            data = data[n:]


def _start(entry: dict, piped: bool) -> subprocess.Popen:
    env = dict(os.environ)
    env.update({k: str(v) for k, v in entry.get("env", {}).items()})
    env["PYTHONUNBUFFERED"] = "1"
    # no new session: Slurm finds and signals a step's processes by process group (or cgroup)
    return subprocess.Popen(list(entry["argv"]), env=env, cwd=entry.get("cwd") or None,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE if piped else None,
                            stderr=subprocess.STDOUT, bufsize=0, preexec_fn=child_setup(), close_fds=True)


def _pump(proc: subprocess.Popen, prefix: str) -> threading.Thread:
    assert proc.stdout is not None
    t = threading.Thread(target=pump_lines, args=(proc.stdout.fileno(), lambda line: emit(prefix + line)),
                         daemon=True)
    t.start()
    return t


def _tree_usage(pid: int) -> tuple | None:
    """(CPU seconds, resident bytes) of a process and its descendants, from /proc (Linux); None once
    it is gone.  Read directly: the wrapper runs without site-packages, so psutil is not at hand."""
    tick, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    cpu = rss = 0.0
    todo, seen = [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/stat") as fh:
                f = fh.read().rsplit(")", 1)[1].split()
            cpu += (int(f[11]) + int(f[12])) / tick
            rss += int(f[21]) * page
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except (OSError, ValueError, IndexError):
            if p == pid:
                return None
    return cpu, rss


def _report_stats(proc: subprocess.Popen, every: float) -> None:
    """CPU seconds and resident memory of the rank and its children, until it ends."""
    def run() -> None:
        time.sleep(min(every, 0.5))     # a process that has not exec'ed yet shows no memory
        while proc.poll() is None:
            usage = _tree_usage(proc.pid)
            if usage is None:
                return
            if usage[1] > 0:
                emit(f"{CONTROL}stats {usage[0]:.3f} {int(usage[1])}")
            time.sleep(every)
    threading.Thread(target=run, daemon=True).start()


def _status(code: int) -> int:
    """The task's own exit status for a rank's subprocess code."""
    return 128 - code if code < 0 else code


def run(attempt_file: str) -> int:
    procid = int(os.environ.get("SLURM_PROCID", "0"))
    node = os.environ.get("SLURMD_NODENAME", "")
    try:
        with open(attempt_file) as fh:
            attempt = json.load(fh)
    except (OSError, ValueError) as exc:
        print(f"pspnet-cluster slurm task {procid} on {node}: cannot read {attempt_file}: {exc} "
              "(is the job dir on a file system every node sees?)", file=sys.stderr, flush=True)
        return 2
    tasks = attempt.get("tasks", [])
    if procid >= len(tasks):
        print(f"pspnet-cluster slurm task {procid}: the plan has only {len(tasks)} ranks", file=sys.stderr, flush=True)
        return 2
    entry = tasks[procid]
    localid = os.environ.get("SLURM_LOCALID", "")
    local_rank = entry.get("local_rank")
    misplaced = (entry.get("host") and node and entry["host"] != node) or \
        (localid.isdigit() and local_rank is not None and int(localid) != local_rank)
    if misplaced:
        print(f"pspnet-cluster slurm task {procid}: Slurm placed it on {node} as local task {localid}; the plan "
              f"has rank {entry.get('rank')} on {entry.get('host')} as local rank {local_rank} (the srun "
              "distribution or the allocation differs from the plan)", file=sys.stderr, flush=True)
        return 2
    # Slurm signals the whole group; the rank acts on SIGTERM itself, this task only waits for it and
    # says so with the rank's exit, so the launcher can tell a stop from outside from a failure
    terminated = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: terminated.set())
    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, lambda *_: None)
    sched = attempt.get("scheduler") if procid == 0 else None
    sproc = spump = None
    if sched:
        sproc = _start(sched, piped=True)
        emit(f"{CONTROL}sched-pid {sproc.pid}")
        spump = _pump(sproc, CONTROL + "sched ")
    # the task's stdout carries control lines too: the rank's output goes through whole-line writes
    # (a rank may write a line in two pieces, and a control line must never land between them)
    proc = _start(entry, piped=True)
    emit(f"{CONTROL}pid {proc.pid} {node} {os.environ.get('SLURM_STEP_ID', '')}")
    pump = _pump(proc, "")
    _report_stats(proc, float(attempt.get("stats_every", STATS_EVERY)))
    code = proc.wait()
    pump.join(5.0)
    emit(f"{CONTROL}exit {code}" + (" signalled" if terminated.is_set() else ""))
    if sproc is not None:
        if code != 0 and sproc.poll() is None:
            sproc.kill()
        try:
            scode = sproc.wait(timeout=float(attempt.get("scheduler_linger", 30.0)))
        except subprocess.TimeoutExpired:
            sproc.kill()
            scode = sproc.wait()
        if spump is not None:
            spump.join(5.0)
        emit(f"{CONTROL}sched-exit {scode}")
        if code == 0 and scode != 0:
            return _status(scode)
    return _status(code)


def probe(token: str, devices: str, backend: str, hccn_conf: str | None, npu_smi: str | None) -> int:
    node = os.environ.get("SLURMD_NODENAME", "")
    report: dict = {"node": node, "python": sys.executable, "token": None, "devices": None,
                              "error": None}
    try:
        with open(token) as fh:
            report["token"] = fh.read().strip()
    except OSError as exc:
        report["token_error"] = exc.strerror or str(exc)
    if backend not in ("cpu", "gpu"):      # CPU slots need no look at the node: the launcher counts them
        try:
            from cluster.accelerators import discover_local
            server = discover_local(backend, devices=devices, hccn_conf=hccn_conf, npu_smi=npu_smi)
            report["devices"] = [d.to_dict() for d in server.devices]
        except Exception as exc:  # noqa: BLE001 - reported to the launcher, which names the node
            report["error"] = str(exc)
    emit(CONTROL + "probe " + json.dumps(report))
    return 0


def main(argv: list | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "run" and not argv[1].startswith("-"):
        return run(argv[1])      # every rank's start takes this path: no argparse import on it
    import argparse
    ap = argparse.ArgumentParser(prog="python -S cluster/slurm_task.py")
    sub = ap.add_subparsers(dest="cmd")
    r = sub.add_parser("run", help="start this task's rank (and on task 0 the scheduler)")
    r.add_argument("attempt_file")
    p = sub.add_parser("probe", help="report this node to the launcher")
    p.add_argument("--token", required=True)
    p.add_argument("--devices", required=True)
    p.add_argument("--backend", default="auto")
    p.add_argument("--hccn-conf")
    p.add_argument("--npu-smi")
    args = ap.parse_args(argv)
    if args.cmd == "run":
        return run(args.attempt_file)
    if args.cmd == "probe":
        return probe(args.token, args.devices, args.backend, args.hccn_conf, args.npu_smi)
    ap.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
