"""Launcher failure handling, driven with the fake worker (no MindSpore): seconds per test."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import events, job_json

ROOT = Path(__file__).resolve().parent.parent
FAKE = ROOT / "tests" / "workers" / "fake_worker.py"


def launch(job_dir, *flags, fake="", devices="2", timeout=60, extra=()):
    # --no-report: no test here is about the end-of-job report, which a loaded machine is slow to draw
    cmd = [sys.executable, "-m", "orchestrator.cli", "launch", "--devices", devices, "--job-dir", str(job_dir),
           "--quiet", "--no-report", *flags, "--cmd", f"python {FAKE} {fake}", *extra]
    return subprocess.run(cmd, cwd=str(ROOT), capture_output=True, text=True, timeout=timeout)


def gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def all_pids(record):
    return [r["pid"] for r in record["ranks"].values() if r["pid"]]


def test_success_splits_logs_and_events(tmp_path):
    jd = tmp_path / "ok"
    res = launch(jd, fake="--steps 3 --epochs 2")
    assert res.returncode == 0, res.stderr + res.stdout
    d = job_json(jd)
    assert d["state"] == "succeeded" and d["exit_code"] == 0
    assert [a["state"] for a in d["attempts"]] == ["succeeded"]
    for r in (0, 1):
        evs = events(jd, r)
        assert [e["global_step"] for e in evs if e["event"] == "step"] == [1, 2, 3, 4, 5, 6]
        assert evs[-1]["event"] == "finished" and evs[0]["rank"] == r
        log = (jd / "logs" / f"rank_{r}.log").read_text()
        assert f"rank {r}: done" in log and log.count("@pspnet ") == len(evs)
        assert not any(l.startswith("@pspnet") for l in (jd / "events" / f"rank_{r}.jsonl").read_text().splitlines())
    assert "fake scheduler" in (jd / "logs" / "scheduler.log").read_text()
    assert all(gone(p) for p in all_pids(d["attempts"][0]))


def test_rank_env_follows_the_contract(tmp_path):
    jd = tmp_path / "env"
    res = launch(jd, fake="--steps 1 --print-env", devices="0,3")
    assert res.returncode == 0, res.stderr
    d = job_json(jd)
    port = d["attempts"][0]["rendezvous"]["port"]
    for r, dev in ((0, 0), (1, 3)):
        line = next(l for l in (jd / "logs" / f"rank_{r}.log").read_text().splitlines() if l.startswith("ENV "))
        env = json.loads(line[4:])
        assert env["RANK_ID"] == str(r) and env["RANK_SIZE"] == "2" and env["DEVICE_ID"] == str(dev)
        assert env["PSPNET_JOB_DIR"] == str(jd) and env["PSPNET_JOB_ID"] == "env" and env["PSPNET_ATTEMPT"] == "0"
        assert env["MS_ROLE"] == "MS_WORKER" and env["MS_NODE_ID"] == str(r) and env["MS_WORKER_NUM"] == "2"
        assert env["MS_SCHED_PORT"] == str(port) and "PSPNET_RESUME" not in env


def test_crash_brings_group_down_and_is_recorded(tmp_path):
    jd = tmp_path / "crash"
    res = launch(jd, "--failure-grace", "5", fake="--steps 2000 --step-time 0.05 --crash-at 3 --exit-code 7 --bad-rank 1")
    assert res.returncode == 1, res.stderr + res.stdout
    d = job_json(jd)
    assert d["state"] == "failed" and d["exit_code"] == 1
    a = d["attempts"][0]
    f = a["failure"]
    assert f["rank"] == 1 and f["reason"] == "exit" and f["exit_code"] == 7
    assert any("crashing at step 3" in l for l in f["last_lines"])
    assert a["ranks"]["1"]["exit_code"] == 7 and a["ranks"]["0"]["signal"] == "SIGTERM"
    # rank 0 (100 s of steps left) ended on SIGTERM, well before the 5 s failure grace would have run out
    assert a["group_down_s"] < 2.5
    assert all(gone(p) for p in all_pids(a))
    assert "rank 1 exited with code 7" in res.stdout and "crashing at step 3" in res.stdout


def test_killed_rank_reports_signal(tmp_path):
    jd = tmp_path / "sig"
    res = launch(jd, fake="--steps 200 --step-time 0.05 --kill-self-at 2 --bad-rank 0")
    assert res.returncode == 1
    f = job_json(jd)["attempts"][0]["failure"]
    assert f["rank"] == 0 and f["reason"] == "signal" and f["signal"] == "SIGKILL" and f["exit_code"] == -9


def test_hang_is_detected(tmp_path):
    jd = tmp_path / "hang"
    res = launch(jd, "--hang-timeout", "1", "--grace", "1",
                 fake="--steps 400 --step-time 0.02 --hang-at 3 --bad-rank 1")
    assert res.returncode == 1, res.stdout
    f = job_json(jd)["attempts"][0]["failure"]
    assert f["rank"] == 1 and f["reason"] == "hang"
    assert any("hanging at step 3" in l for l in f["last_lines"])


def test_compile_time_is_not_a_hang_but_startup_has_a_limit(tmp_path):
    jd = tmp_path / "compile"
    res = launch(jd, "--hang-timeout", "0.5", fake="--steps 2 --compile-time 1.5")
    assert res.returncode == 0, res.stdout
    jd2 = tmp_path / "startup"
    res = launch(jd2, "--startup-timeout", "1", "--grace", "1", fake="--silent-start --bad-rank 0")
    assert res.returncode == 1
    assert job_json(jd2)["attempts"][0]["failure"]["reason"] == "startup"


def test_sigterm_ignoring_worker_is_killed_after_grace(tmp_path):
    jd = tmp_path / "stubborn"
    res = launch(jd, "--hang-timeout", "0.5", "--failure-grace", "1",
                 fake="--steps 400 --step-time 0.02 --hang-at 2 --ignore-sigterm")
    assert res.returncode == 1
    a = job_json(jd)["attempts"][0]
    assert {a["ranks"][r]["signal"] for r in ("0", "1")} == {"SIGKILL"}
    assert 0.9 < a["group_down_s"] < 10          # SIGKILL came after the 1 s failure grace, not at once
    assert all(gone(p) for p in all_pids(a))


def test_restart_resumes_from_newest_intact_common_checkpoint(tmp_path):
    jd = tmp_path / "restart"
    # checkpoints at steps 2, 4; rank 1 damages its step-4 file, then crashes at step 5
    res = launch(jd, "--max-restarts", "1",
                 fake="--steps 3 --epochs 2 --ckpt-every 2 --crash-at 5 --corrupt-at 4 --bad-rank 1 --print-env")
    assert res.returncode == 0, res.stdout
    d = job_json(jd)
    assert d["state"] == "succeeded" and d["restarts"] == 1
    a0, a1 = d["attempts"]
    assert a0["state"] == "failed" and a1["state"] == "succeeded"
    assert a1["resume"]["global_step"] == 2
    assert a0["rendezvous"]["port"] != a1["rendezvous"]["port"]
    for r in (0, 1):
        assert a1["resume"]["paths"][str(r)].endswith(f"rank_{r}/pspnet_e0001_s00000002.ckpt")
        envs = [json.loads(l[4:]) for l in (jd / "logs" / f"rank_{r}.log").read_text().splitlines()
                if l.startswith("ENV ")]
        assert envs[1]["PSPNET_ATTEMPT"] == "1" and envs[1]["PSPNET_RESUME"] == a1["resume"]["paths"][str(r)]
        steps1 = [e for e in events(jd, r) if e["event"] == "step" and e["attempt"] == 1]
        assert [e["global_step"] for e in steps1] == [3, 4, 5, 6]
        assert steps1[0]["loss"] == pytest.approx(1 / 4)


def test_restart_without_checkpoint_starts_from_scratch(tmp_path):
    jd = tmp_path / "scratch"
    res = launch(jd, "--max-restarts", "2", fake="--steps 3 --crash-at 2 --bad-rank 0")
    assert res.returncode == 0
    a1 = job_json(jd)["attempts"][1]
    assert a1["resume"] is None
    assert [e["global_step"] for e in events(jd, 0) if e["event"] == "step" and e["attempt"] == 1] == [1, 2, 3]


def test_restarts_used_up_fail_the_job(tmp_path):
    jd = tmp_path / "usedup"
    res = launch(jd, "--max-restarts", "1", fake="--steps 3 --crash-at 2 --bad-rank 0 --bad-attempt -1")
    assert res.returncode == 1
    d = job_json(jd)
    assert d["state"] == "failed" and [a["state"] for a in d["attempts"]] == ["failed", "failed"]
    assert "no restarts left" in d["message"]
