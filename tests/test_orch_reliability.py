"""What a careless or hostile user does to a job, with fake ranks, real processes and real files:
two owners of one job dir, stale pid files, processes left behind, floods, file faults."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import alive, events, job_json, wait_for

ROOT = Path(__file__).resolve().parent.parent
FAKE = ROOT / "tests" / "workers" / "fake_worker.py"
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


def cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *map(str, args)], cwd=str(ROOT), env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def launch_argv(jd, fake, *flags, devices="2"):
    # --no-report: drawing the end-of-job report takes a loaded machine longer than a test waits for a
    # stopped launcher to exit, and no test here is about it
    return [sys.executable, "-m", "orchestrator.cli", "launch", "--devices", devices, "--job-dir", str(jd),
            "--quiet", "--no-report", *map(str, flags), "--cmd", f"python {FAKE} {fake}"]


def start(jd, fake, *flags, devices="2"):
    return subprocess.Popen(launch_argv(jd, fake, *flags, devices=devices), cwd=str(ROOT), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def step_events(jd, rank):
    return [e for e in events(jd, rank) if e["event"] == "step"]


def finish(p, sig=signal.SIGTERM):
    if p.poll() is None:
        p.send_signal(sig)
    try:
        return p.communicate(timeout=30)
    finally:
        p.kill()


# ---------------------------------------------------------------- one owner per job dir

def test_two_launches_into_one_job_dir_one_wins_the_other_exits_2(tmp_path):
    jd = tmp_path / "job"
    fake = "--steps 20 --step-time 0.05"
    a, b = start(jd, fake), start(jd, fake)
    out_a, err_a = a.communicate(timeout=60)
    out_b, err_b = b.communicate(timeout=60)
    codes = sorted([a.returncode, b.returncode])
    assert codes == [0, 2], (out_a, err_a, out_b, err_b)
    loser_err = err_a if a.returncode == 2 else err_b
    assert "running" in loser_err or "already holds a job" in loser_err
    d = job_json(jd)
    assert len(d["attempts"]) == 1
    for r in (0, 1):
        assert [e["global_step"] for e in step_events(jd, r)] == list(range(1, 21))


def test_two_resumes_one_runs_the_other_exits_2_naming_the_owner(tmp_path):
    jd = tmp_path / "job"
    first = start(jd, "--steps 200 --step-time 0.05 --ckpt-every 5")
    wait_for(lambda: len(step_events(jd, 1)) >= 6, what="steps")
    finish(first)
    assert job_json(jd)["state"] == "stopped"
    argv = [sys.executable, "-m", "orchestrator.cli", "resume", str(jd), "--quiet"]
    a = subprocess.Popen(argv, cwd=str(ROOT), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(job_json(jd)["attempts"]) == 2, what="the first resume's attempt")
    b = cli("resume", jd)
    assert b.returncode == 2 and "is running" in b.stderr and f"pid {a.pid}" in b.stderr
    finish(a)
    assert len(job_json(jd)["attempts"]) == 2


def test_a_stale_pid_file_never_gets_an_unrelated_process_signalled(tmp_path):
    jd = tmp_path / "job"
    assert cli("launch", "--devices", "1", "--job-dir", jd, "--quiet", "--cmd",
               f"python {FAKE} --steps 1").returncode == 0
    # what a SIGKILLed launcher leaves, with its pid since reused by an unrelated process
    d = job_json(jd)
    d["state"] = "running"
    (jd / "job.json").write_text(json.dumps(d))
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        import psutil
        (jd / "launcher.pid").write_text(json.dumps({"pid": bystander.pid, "host": os.uname().nodename,
                                                     "start": psutil.Process(bystander.pid).create_time() - 5}))
        st = cli("status", jd)
        assert "launcher running" not in st.stdout and "launcher gone" in st.stdout
        res = cli("stop", jd)
        assert res.returncode == 0, res.stderr
        assert bystander.poll() is None, "stop signalled a process that is not the launcher"
        assert job_json(jd)["state"] == "stopped"
        res = cli("resume", jd, "--quiet")
        assert res.returncode == 0, res.stdout + res.stderr
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


# ---------------------------------------------------------------- no process left behind

@pytest.mark.parametrize("where", ["group", "session"])
def test_a_ranks_children_end_with_a_successful_job(tmp_path, where):
    jd, pids = tmp_path / "job", tmp_path / "pids"
    pids.mkdir()
    p = start(jd, f"--steps 3 --spawn-child {where} --pid-file-dir {pids}")
    p.communicate(timeout=60)
    assert p.returncode == 0
    children = [int((pids / f"child_{r}.pid").read_text()) for r in (0, 1)]
    wait_for(lambda: not any(alive(c) for c in children), timeout=5, what="the ranks' children to end")


def test_what_survives_a_sigkilled_launcher_is_ended_by_stop_and_by_resume(tmp_path):
    jd, pids = tmp_path / "job", tmp_path / "pids"
    pids.mkdir()
    p = start(jd, f"--steps 400 --step-time 0.05 --ckpt-every 5 --spawn-child session --pid-file-dir {pids}")
    try:
        wait_for(lambda: len(step_events(jd, 1)) >= 6, what="steps")
        os.kill(p.pid, signal.SIGKILL)
        p.wait(5)
    finally:
        p.kill()
        p.wait()
    children = [int((pids / f"child_{r}.pid").read_text()) for r in (0, 1)]
    assert all(alive(c) for c in children)          # PDEATHSIG ends the ranks, not what they started
    res = cli("stop", jd)
    assert res.returncode == 0, res.stderr
    assert "leftover" in res.stdout
    wait_for(lambda: not any(alive(c) for c in children), timeout=5, what="stop to end the leftovers")
    # again, and this time resume does the cleaning
    for f in pids.glob("child_*.pid"):
        f.unlink()
    argv = [sys.executable, "-m", "orchestrator.cli", "resume", str(jd), "--quiet"]
    p = subprocess.Popen(argv, cwd=str(ROOT), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: all((pids / f"child_{r}.pid").exists() for r in (0, 1)), what="children of attempt 1")
        os.kill(p.pid, signal.SIGKILL)
        p.wait(5)
    finally:
        p.kill()
        p.wait()
    children = [int((pids / f"child_{r}.pid").read_text()) for r in (0, 1)]
    assert all(alive(c) for c in children)
    p = subprocess.Popen(argv, cwd=str(ROOT), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: not any(alive(c) for c in children), timeout=20, what="resume to end the leftovers")
    finally:
        finish(p)
