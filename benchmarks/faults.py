"""Fault injection: what a careless or hostile user does to a job, with fake ranks (no MindSpore).

Each case runs real launcher processes on real files and prints one line: ``held`` (the launcher
behaved: clean exit code, no traceback, nothing lost), ``LOST`` (it did not), and how many of the
job's processes were ``left running`` afterwards.  Then two timings: how long a rank that stops
stepping at 0.2 s/step takes to be declared hung (goal < 5 s), and how long the launcher takes to
exit after a rank's death, end-of-job report included (goal < 0.5 s).

    python benchmarks/faults.py            # every case, ~3-4 minutes on an idle 2-core machine
    python benchmarks/faults.py --only hang,death --repeat 5

Goal: every line held, zero processes left running, zero events lost.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cluster import proc  # noqa: E402

FAKE = ROOT / "tests" / "workers" / "fake_worker.py"
ENV = dict(os.environ, PYTHONPATH=str(ROOT))
PY = sys.executable


def cli(*args, timeout=120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "orchestrator.cli", *map(str, args)], cwd=str(ROOT), env=ENV,
                          capture_output=True, text=True, timeout=timeout, **kw)


def launch_argv(jd: Path, fake: str, *flags, devices: str = "2") -> List[str]:
    return [PY, "-m", "orchestrator.cli", "launch", "--devices", devices, "--job-dir", str(jd), "--quiet",
            *map(str, flags), "--cmd", f"python {FAKE} {fake}"]


def start(jd: Path, fake: str, *flags, devices: str = "2", **kw) -> subprocess.Popen:
    return subprocess.Popen(launch_argv(jd, fake, *flags, devices=devices), cwd=str(ROOT), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def wait_for(cond: Callable[[], bool], timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def job_json(jd: Path) -> Dict:
    try:
        return json.loads((jd / "job.json").read_text())
    except (OSError, ValueError):
        return {}


def steps(jd: Path, rank: int) -> List[int]:
    try:
        lines = (jd / "events" / f"rank_{rank}.jsonl").read_text().splitlines()
    except OSError:
        return []
    return [e["global_step"] for e in map(json.loads, lines) if e.get("event") == "step"]


def left_running(jd: Path) -> int:
    d = job_json(jd)
    job_id = d.get("job_id") or jd.name
    time.sleep(0.2)
    pids = proc.tagged_processes({"PSPNET_JOB_ID": job_id, "PSPNET_JOB_DIR": str(jd)})
    proc.end_processes(pids)
    return len(pids)


def alive(pid: int) -> bool:
    return proc._alive(pid)  # noqa: SLF001 - the same zombie-aware check the module uses


def clean(text: str) -> bool:
    return "Traceback" not in text


# ---------------------------------------------------------------- cases: each returns (held, detail)

def case_two_launches(tmp: Path) -> Tuple[bool, str, Path]:
    jd = tmp / "job"
    a, b = start(jd, "--steps 20 --step-time 0.05"), start(jd, "--steps 20 --step-time 0.05")
    oa, ea = a.communicate(timeout=120)
    ob, eb = b.communicate(timeout=120)
    codes = sorted([a.returncode, b.returncode])
    lost = [s for r in (0, 1) for s in [steps(jd, r)] if s != list(range(1, 21))]
    return codes == [0, 2] and not lost and clean(ea + eb), f"exit codes {codes}, steps per rank 20", jd


def case_two_resumes(tmp: Path) -> Tuple[bool, str, Path]:
    jd = tmp / "job"
    first = start(jd, "--steps 400 --step-time 0.05 --ckpt-every 5")
    wait_for(lambda: len(steps(jd, 1)) >= 6)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=60)
    argv = [PY, "-m", "orchestrator.cli", "resume", str(jd), "--quiet"]
    a = subprocess.Popen(argv, cwd=str(ROOT), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(job_json(jd).get("attempts", [])) == 2)
    b = cli("resume", jd)
    a.send_signal(signal.SIGTERM)
    a.communicate(timeout=60)
    n = len(job_json(jd).get("attempts", []))
    return b.returncode == 2 and n == 2, f"second resume exit {b.returncode}, attempts {n}", jd


def case_stale_pid(tmp: Path) -> Tuple[bool, str, Path]:
    jd = tmp / "job"
    cli("launch", "--devices", "1", "--job-dir", jd, "--quiet", "--cmd", f"python {FAKE} --steps 1")
    d = job_json(jd)
    d["state"] = "running"
    (jd / "job.json").write_text(json.dumps(d))
    bystander = subprocess.Popen(["sleep", "60"])
    (jd / "launcher.pid").write_text(json.dumps({"pid": bystander.pid, "host": os.uname().nodename,
                                                 "start": time.time() - 1000}))
    stop = cli("stop", jd)
    res = cli("resume", jd, "--quiet")
    ok = bystander.poll() is None and stop.returncode == 0 and res.returncode == 0
    bystander.kill()
    bystander.wait()
    return ok, f"unrelated process alive after stop+resume: {ok}", jd


def _children_after(tmp: Path, where: str, kill_launcher: bool) -> Tuple[bool, str, Path]:
    jd, pids = tmp / "job", tmp / "pids"
    pids.mkdir()
    fake = f"--steps {400 if kill_launcher else 3} --step-time 0.05 --spawn-child {where} --pid-file-dir {pids}"
    p = start(jd, fake)
    if kill_launcher:
        wait_for(lambda: len(steps(jd, 1)) >= 3)
        os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=60)
    kids = [int((pids / f"child_{r}.pid").read_text()) for r in (0, 1) if (pids / f"child_{r}.pid").exists()]
    if kill_launcher:
        cli("stop", jd)
    wait_for(lambda: not any(alive(k) for k in kids), 5)
    survivors = [k for k in kids if alive(k)]
    for k in survivors:
        os.kill(k, signal.SIGKILL)
    return len(kids) == 2 and not survivors, f"{len(survivors)} of {len(kids)} rank children alive", jd


def case_children_success(tmp: Path):
    return _children_after(tmp, "session", kill_launcher=False)


def case_children_launcher_killed(tmp: Path):
    return _children_after(tmp, "session", kill_launcher=True)


def case_flood(tmp: Path) -> Tuple[bool, str, Path]:
    jd = tmp / "job"
    t0 = time.monotonic()
    res = subprocess.run(launch_argv(jd, "--steps 200 --step-time 0.01 --flood 1000", "--hang-timeout", "5"),
                         cwd=str(ROOT), env=ENV, capture_output=True, text=True, timeout=300)
    dt = time.monotonic() - t0
    ok = res.returncode == 0 and steps(jd, 1) == list(range(1, 201))
    return ok, f"400k lines of chatter, --hang-timeout 5: exit {res.returncode} in {dt:.1f} s", jd


def case_huge_lines(tmp: Path) -> Tuple[bool, str, Path]:
    jd = tmp / "job"
    res = subprocess.run(launch_argv(jd, "--steps 5 --crash-at 2 --big-line 20000000", devices="1"),
                         cwd=str(ROOT), env=ENV, capture_output=True, text=True, timeout=120)
    size = (jd / "job.json").stat().st_size if (jd / "job.json").exists() else -1
    ok = res.returncode == 1 and 0 < size < 200_000 and clean(res.stderr)
    return ok, f"20 MB line: job.json {size / 1e3:.0f} kB, failure seen, exit {res.returncode}", jd


def case_disk_full(tmp: Path) -> Tuple[bool, str, Path]:
    jd = tmp / "job"

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    p = start(jd, "--steps 2000 --step-time 0.01 --flood 30", preexec_fn=small_disk)
    out, err = p.communicate(timeout=120)
    ok = p.returncode == 1 and clean(out + err) and "cannot be saved" in out and job_json(jd).get("state") == "failed"
    return ok, f"file size limit as a full disk: exit {p.returncode}, job.json {job_json(jd).get('state')}", jd


def case_log_is_dir(tmp: Path) -> Tuple[bool, str, Path]:
    jd = tmp / "job"
    subprocess.run(launch_argv(jd, "--steps 5 --crash-at 2 --bad-rank 0"), cwd=str(ROOT), env=ENV,
                   capture_output=True, timeout=120)
    log = jd / "logs" / "rank_1.log"
    log.unlink()
    log.mkdir()
    res = cli("resume", jd, "--quiet")
    ok = res.returncode == 1 and clean(res.stdout + res.stderr) and "Is a directory" in res.stdout
    return ok, f"resume with a log path turned directory: exit {res.returncode}", jd


def case_job_json_unwritable(tmp: Path) -> Tuple[bool, str, Path]:
    jd = tmp / "job"
    p = start(jd, "--steps 2000 --step-time 0.05 --crash-at 20")
    wait_for(lambda: len(steps(jd, 1)) >= 3)
    (jd / "job.json").unlink()
    (jd / "job.json").mkdir()
    out, err = p.communicate(timeout=120)
    ok = p.returncode == 1 and clean(out + err)
    (jd / "job.json").rmdir()
    return ok, f"job.json replaced by a directory mid-run: exit {p.returncode}", jd


def case_events_deleted(tmp: Path) -> Tuple[bool, str, Path]:
    jd = tmp / "job"
    p = start(jd, "--steps 60 --step-time 0.05")
    wait_for(lambda: len(steps(jd, 1)) >= 3)
    (jd / "events" / "rank_1.jsonl").unlink()
    p.communicate(timeout=120)
    lost = len(set(range(1, 61)) - set(steps(jd, 1)))
    st = json.loads(cli("status", jd, "--json").stdout or "{}")
    seen = (st.get("progress") or {}).get("1", {}).get("global_step")
    return p.returncode == 0 and lost == 0 and seen == 60, f"events file deleted at step ~3: {lost} step events lost, status sees step {seen}", jd


def case_backoff(tmp: Path) -> Tuple[bool, str, Path]:
    jd = tmp / "job"
    res = subprocess.run(launch_argv(jd, "--steps 3 --crash-at 1 --bad-attempt -1", "--max-restarts", "3",
                                     devices="1"), cwd=str(ROOT), env=ENV, capture_output=True, text=True, timeout=120)
    starts = [a["start"] for a in job_json(jd).get("attempts", [])]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    big = cli("launch", "--devices", "1", "--job-dir", tmp / "j2", "--max-restarts", "99999999999999999999",
              "--cmd", f"python {FAKE}")
    ok = res.returncode == 1 and len(starts) == 4 and gaps[-1] > gaps[0] and big.returncode == 2
    return ok, "gaps " + ", ".join(f"{g:.1f}" for g in gaps) + " s; --max-restarts 1e20 exit " + str(big.returncode), jd


def case_bad_numbers(tmp: Path) -> Tuple[bool, str, Path]:
    jd = tmp / "job"
    base = ("launch", "--devices", "1", "--job-dir", jd, "--cmd", f"python {FAKE}")
    tries = [(*base, "--hang-timeout", "nan"), (*base, "--hang-timeout", "inf"), (*base, "--grace", "1e309"),
             ("launch", "--devices", "1", "--job-dir", jd, "--cmd", "'x"),
             ("launch", "--devices", "1", "--job-dir", jd, "--sched-host", "nosuchhost.invalid", "--cmd", f"python {FAKE}"),
             ("metrics", tmp, "--port", "70000"), ("metrics", tmp, "--port", "-5"),
             ("summary", tmp, "--window", "-1"), ("top", tmp, "--window", "-1"), ("report", tmp)]
    bad = [t for t in tries if (lambda r: r.returncode != 2 or not clean(r.stderr))(cli(*t))]
    return not bad and not jd.exists(), f"{len(tries) - len(bad)} of {len(tries)} bad inputs exit 2", jd


def case_corrupt_checkpoint(tmp: Path) -> Tuple[bool, str, Path]:
    jd = tmp / "job"
    subprocess.run(launch_argv(jd, "--steps 12 --ckpt-every 4 --crash-at 10 --bad-rank 0"), cwd=str(ROOT),
                   env=ENV, capture_output=True, timeout=120)
    ck0 = sorted((jd / "ckpt" / "rank_0").glob("*.ckpt"))
    side = ck0[-1].with_name(ck0[-1].name + ".json")
    side.write_text(side.read_text().replace('"global_step": 8', '"global_step": 1e999'))
    ck1 = sorted((jd / "ckpt" / "rank_1").glob("*.ckpt"))
    ck1[0].unlink()
    os.mkfifo(ck1[0])
    try:
        res = cli("resume", jd, "--quiet", timeout=60)
    except subprocess.TimeoutExpired:
        return False, "resume blocked", jd
    return res.returncode == 0 and clean(res.stderr), f"1e999 step + FIFO checkpoint: resume exit {res.returncode}", jd


CASES: Dict[str, Callable[[Path], Tuple[bool, str, Path]]] = {
    "two launches, one job dir": case_two_launches,
    "two resumes, one job dir": case_two_resumes,
    "stale launcher.pid, pid reused": case_stale_pid,
    "rank children after success": case_children_success,
    "rank children after launcher SIGKILL": case_children_launcher_killed,
    "flooding rank": case_flood,
    "20 MB output line": case_huge_lines,
    "disk full": case_disk_full,
    "log path replaced by a directory": case_log_is_dir,
    "job.json unwritable mid-run": case_job_json_unwritable,
    "events file deleted mid-run": case_events_deleted,
    "restart backoff": case_backoff,
    "bad numbers and inputs": case_bad_numbers,
    "corrupt checkpoint metadata": case_corrupt_checkpoint,
}


# ---------------------------------------------------------------- timings

def hang_latency(tmp: Path) -> Optional[float]:
    """Seconds from a rank's last step event to the launcher declaring it hung (0.2 s/step)."""
    jd = tmp / "hang"
    subprocess.run(launch_argv(jd, "--steps 400 --step-time 0.2 --hang-at 40 --bad-rank 1", "--hang-timeout", "900"),
                   cwd=str(ROOT), env=ENV, capture_output=True, timeout=300)
    f = (job_json(jd).get("attempts") or [{}])[0].get("failure") or {}
    evs = [json.loads(l) for l in (jd / "events" / "rank_1.jsonl").read_text().splitlines()]
    last = [e["ts"] for e in evs if e.get("event") == "step"][-1]
    return f["at"] - last if f.get("reason") == "hang" else None


def death_to_exit(tmp: Path, *flags: str) -> float:
    """Seconds from a rank's SIGKILL to the launcher's exit."""
    jd = tmp / ("death" + "".join(flags))
    p = start(jd, "--steps 400 --step-time 0.02 --kill-self-at 30 --bad-rank 1", *flags)
    p.communicate(timeout=120)
    ended = time.time()
    text = (jd / "logs" / "rank_1.log").read_text()
    t = float(text.split("SIGKILL myself at step 30 (t=")[1].split(")")[0])
    return ended - t


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated: cases, hang, death (default: all)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each timing [3]")
    args = ap.parse_args(argv)
    only = {w.strip() for w in args.only.split(",") if w.strip()}
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}  ({os.cpu_count()} cores)")
    held = total = left_total = 0
    if not only or "cases" in only:
        print(f"{'case':40s} {'result':6s} {'left':>4s}  detail")
        for name, fn in CASES.items():
            with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
                t0 = time.monotonic()
                try:
                    ok, detail, jd = fn(Path(tmp))
                    left = left_running(jd)
                except Exception as exc:  # noqa: BLE001 - a broken case is a lost case, reported
                    ok, detail, left = False, f"{type(exc).__name__}: {exc}", 0
                total += 1
                held += bool(ok and not left)
                left_total += left
                print(f"{name:40s} {'held' if ok and not left else 'LOST':6s} {left:>4d}  {detail} "
                      f"[{time.monotonic() - t0:.1f} s]", flush=True)
        print(f"held {held} of {total}; processes left running: {left_total}")
    if not only or "hang" in only:
        with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
            xs = [hang_latency(Path(tmp) / str(i)) for i in range(args.repeat)]
        got = [x for x in xs if x is not None]
        print(f"hang detection at 0.2 s/step (goal < 5 s): "
              + (f"median {statistics.median(got):.2f} s, max {max(got):.2f} s" if got else "not detected")
              + f" over {len(got)}/{len(xs)} runs")
    if not only or "death" in only:
        with tempfile.TemporaryDirectory(prefix="faults-") as tmp:
            for flags in ((), ("--no-report",)):
                xs = [death_to_exit(Path(tmp) / f"{i}", *flags) for i in range(args.repeat)]
                print(f"rank death -> launcher exit{' (--no-report)' if flags else ' (with report)'} "
                      f"(goal < 0.5 s): median {statistics.median(xs):.3f} s, max {max(xs):.3f} s")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0 if held == total else 1


if __name__ == "__main__":
    sys.exit(main())
