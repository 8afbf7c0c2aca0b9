"""launch/resume/stop/status/logs commands, signals, dry run, bad input (fake worker, no MindSpore)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import alive, free_port, job_json, wait_for

ROOT = Path(__file__).resolve().parent.parent
FAKE = ROOT / "tests" / "workers" / "fake_worker.py"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def cli(*args, timeout=60, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *map(str, args)], cwd=str(cwd),
                          capture_output=True, text=True, timeout=timeout)


def start_launcher(job_dir, fake, *flags, devices="2", report=False):
    # without the end-of-job report unless a test is about it: drawing it takes a loaded machine longer
    # than these tests wait for a stopped launcher to exit
    flags = flags if report else (*flags, "--no-report")
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "launch", "--devices", devices,
                             "--job-dir", str(job_dir), "--quiet", *flags, "--cmd", f"python {FAKE} {fake}"],
                            cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def ckpt_steps(job_dir, rank):
    return sorted(p.name for p in (Path(job_dir) / "ckpt" / f"rank_{rank}").glob("*.ckpt.json"))


def test_sigkill_of_launcher_leaves_no_rank(tmp_path):
    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()
    proc = start_launcher(tmp_path / "job", f"--steps 10000 --step-time 0.05 --sched-stay --pid-file-dir {pids_dir}")
    try:
        wait_for(lambda: len(list(pids_dir.glob("*.pid"))) == 3, what="3 processes (scheduler + 2 ranks)")
        pids = [int(p.read_text()) for p in pids_dir.glob("*.pid")]
        assert all(alive(p) for p in pids)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        wait_for(lambda: not any(alive(p) for p in pids), timeout=2.0, what="every rank to die with the launcher")
    finally:
        proc.kill()
        proc.wait()
    # the job is left "running" with its launcher gone: status says so
    st = json.loads(cli("status", tmp_path / "job", "--json").stdout)
    assert st["launcher_alive"] is False and "launcher gone" in st["state_note"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_to_launcher_stops_cleanly(tmp_path, sig):
    jd = tmp_path / "job"
    proc = start_launcher(jd, "--steps 10000 --step-time 0.05 --ckpt-every 5")
    try:
        wait_for(lambda: ckpt_steps(jd, 1), what="a checkpoint")
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 130, out
    d = job_json(jd)
    assert d["state"] == "stopped" and d["attempts"][0]["stop_reason"] == signal.Signals(sig).name
    assert not any(alive(r["pid"]) for r in d["attempts"][0]["ranks"].values())
    assert "resume" in d["message"]


def test_stop_then_resume_status_logs(tmp_path):
    jd = tmp_path / "job"
    # rank 0 holds at step 20 of the first attempt, so the job is still running when `stop` comes however
    # slowly a loaded machine starts the command
    proc = start_launcher(jd, "--steps 40 --step-time 0.05 --ckpt-every 5 --ignore-sigterm --bad-rank 0 "
                              "--bad-attempt 0 --hang-at 20", "--grace", "2")
    try:
        wait_for(lambda: ckpt_steps(jd, 0) and ckpt_steps(jd, 1), what="checkpoints on both ranks")
        res = cli("stop", jd)
        assert res.returncode == 0, res.stderr
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 130
    d = job_json(jd)
    assert d["state"] == "stopped" and d["attempts"][0]["stop_reason"] == "stop command"
    st = cli("status", jd)
    assert "STOPPED" in st.stdout and "attempt 0: stopped" in st.stdout
    res = cli("resume", jd, "--quiet", timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    d = job_json(jd)
    assert d["state"] == "succeeded" and len(d["attempts"]) == 2
    resumed_at = d["attempts"][1]["resume"]["global_step"]
    assert resumed_at >= 5 and resumed_at % 5 == 0
    evs = [json.loads(l) for l in (jd / "events" / "rank_0.jsonl").read_text().splitlines()]
    steps1 = [e["global_step"] for e in evs if e["event"] == "step" and e["attempt"] == 1]
    assert steps1 == list(range(resumed_at + 1, 41))
    # resuming a finished job does nothing
    again = cli("resume", jd)
    assert again.returncode == 0 and "already succeeded" in again.stdout
    # status of everything under runs/, logs of one rank
    lst = cli("status", "--runs", tmp_path)
    assert "job" in lst.stdout and "succeeded" in lst.stdout
    js = json.loads(cli("status", "--runs", tmp_path, "--json").stdout)
    assert [j["job_id"] for j in js] == ["job"]
    lg = cli("logs", jd, "--rank", "1", "-n", "2")
    assert lg.returncode == 0 and lg.stdout.splitlines()[-1] == "rank 1: done"
    both = cli("logs", jd)
    assert "[rank_0] rank 0: done" in both.stdout and "[rank_1] rank 1: done" in both.stdout
    follow = cli("logs", jd, "-f", "--rank", "0", timeout=10)   # a finished job: prints and returns
    assert follow.returncode == 0 and "rank 0: done" in follow.stdout


def test_resume_refuses_a_running_job(tmp_path):
    jd = tmp_path / "job"
    proc = start_launcher(jd, "--steps 10000 --step-time 0.05")
    try:
        wait_for(lambda: (jd / "launcher.pid").exists(), what="launcher pid file")
        res = cli("resume", jd)
        assert res.returncode == 2 and "is running" in res.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)


def test_dry_run_prints_plan_and_starts_nothing(tmp_path):
    jd = tmp_path / "dry"
    res = cli("launch", "--devices", "0-3", "--backend", "ascend", "--hccn-conf", FIXTURES / "hccn.conf",
              "--job-dir", jd, "--dry-run", "--cmd", f"python {FAKE}")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert '"device_ip": "192.168.103.101"' in out and '"host_nic_ip": "reserve"' in out
    assert "mode ranktable" in out and "core binding:" in out
    for r in range(4):
        assert f"rank_{r}: DEVICE_ID={r} " in out and f"RANK_ID={r} " in out
    assert f"RANK_TABLE_FILE={jd}/rank_table.json" in out
    assert not jd.exists()
    res = cli("launch", "--devices", "2", "--dry-run", "--job-dir", jd, "--", "epochs=1")
    assert res.returncode == 0, res.stderr
    assert "trainer.train --config smoke --backend cpu epochs=1" in res.stdout and "MS_ROLE=MS_SCHED" in res.stdout
    assert "config_sha" in res.stdout and not jd.exists()


def _bad(tmp_path, *args):
    jd = tmp_path / "bad"
    res = cli("launch", "--job-dir", jd, *args)
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert not (jd / "job.json").exists() and not (jd / "logs").exists()
    return res.stderr


def test_bad_input_is_exit_2_and_starts_nothing(tmp_path):
    hccn = FIXTURES / "hccn.conf"
    assert "unknown device id" in _bad(tmp_path, "--devices", "0-9", "--backend", "ascend", "--hccn-conf", hccn)
    assert "this server has" in _bad(tmp_path, "--devices", "12", "--backend", "ascend", "--hccn-conf", hccn)
    broken = tmp_path / "hccn.conf"
    broken.write_text("address_0=192.168.100.101\naddress_1=not-an-ip\n")
    err = _bad(tmp_path, "--devices", "2", "--backend", "ascend", "--hccn-conf", broken)
    assert str(broken) in err and ":2" in err
    smi = tmp_path / "npu-smi.txt"
    smi.write_text("+------+\n| 0  910B4 | OK | garbage\n")
    assert "npu-smi" in _bad(tmp_path, "--devices", "2", "--backend", "ascend", "--npu-smi", smi)
    assert "--config nope" in _bad(tmp_path, "--devices", "2", "--config", "nope")
    assert "unknown key" in _bad(tmp_path, "--devices", "2", "--", "epochz=3")
    assert "command not found" in _bad(tmp_path, "--devices", "2", "--cmd", "no-such-program-xyz --flag")
    assert "script not found" in _bad(tmp_path, "--devices", "2", "--cmd", "python no_such_script.py")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert "busy" in _bad(tmp_path, "--devices", "2", "--metrics-port", port, "--cmd", f"python {FAKE}")
        assert "busy" in _bad(tmp_path, "--devices", "2", "--sched-port", port, "--cmd", f"python {FAKE}")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = cli("launch", "--devices", "2", "--job-dir", blocker / "job", "--cmd", f"python {FAKE}")
    assert res.returncode == 2 and "not writable" in res.stderr
    assert "ranktable needs" in _bad(tmp_path, "--devices", "2", "--backend", "cpu", "--mode", "ranktable")
    assert "--devices is required" in _bad(tmp_path)


def test_existing_job_dir_is_not_overwritten(tmp_path):
    jd = tmp_path / "job"
    assert cli("launch", "--devices", "1", "--job-dir", jd, "--quiet", "--cmd", f"python {FAKE} --steps 1").returncode == 0
    before = (jd / "job.json").read_text()
    res = cli("launch", "--devices", "1", "--job-dir", jd, "--cmd", f"python {FAKE} --steps 1")
    assert res.returncode == 2 and "resume" in res.stderr
    assert (jd / "job.json").read_text() == before


def test_help_is_fast_and_imports_no_mindspore():
    code = ("import sys\nfrom orchestrator import cli\n"
            "for argv in (['--help'], ['launch', '--help'], ['status', '--help']):\n"
            "    try:\n        cli.main(argv)\n    except SystemExit:\n        pass\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('mindspore', 'trainer', 'psutil', 'fabric')]\n"
            "print('HEAVY', bad)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout
    assert "exit codes:" in res.stdout and "--max-restarts" in res.stdout and "examples:" in res.stdout


def test_spec_file_and_command_line_merge(tmp_path):
    spec = tmp_path / "job.yaml"
    spec.write_text("devices: '0,1'\nmax_restarts: 3\nhang_timeout: 60\n"
                    f"cmd: python {FAKE} --steps 1\n")
    res = cli("launch", "--spec", spec, "--max-restarts", "1", "--job-dir", tmp_path / "j", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "restarts: up to 1; hang timeout 60 s" in res.stdout
    spec.write_text("devices: 2\nmax_restart: 3\n")
    res = cli("launch", "--spec", spec, "--dry-run")
    assert res.returncode == 2 and "max_restart" in res.stderr and str(spec) in res.stderr
    spec.write_text("devices: [2\n")
    res = cli("launch", "--spec", spec, "--dry-run")
    assert res.returncode == 2 and "line" in res.stderr


def test_metrics_port_serves_process_stats_of_live_ranks(tmp_path):
    import urllib.request
    port = free_port()
    jd = tmp_path / "job"
    proc = start_launcher(jd, "--steps 10000 --step-time 0.05", "--metrics-port", str(port))
    try:
        wait_for(lambda: (jd / "events" / "rank_1.jsonl").exists(), what="rank events")
        def scrape():
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            except OSError:
                return None
            cpu = [l for l in body.splitlines() if l.startswith("pspnet_process_cpu_seconds_total{")]
            return cpu if any('rank="0"' in l for l in cpu) and any('rank="1"' in l for l in cpu) else None

        wait_for(scrape, timeout=60, interval=0.2, what="process figures of both ranks on /metrics")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    assert proc.returncode == 130


def test_resume_after_the_launcher_was_killed(tmp_path):
    jd = tmp_path / "job"
    proc = start_launcher(jd, "--steps 60 --step-time 0.05 --ckpt-every 5")
    try:
        wait_for(lambda: ckpt_steps(jd, 0) and ckpt_steps(jd, 1), what="checkpoints on both ranks")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
    finally:
        proc.kill()
        proc.wait()
    assert job_json(jd)["state"] == "running"       # what the killed launcher left behind
    res = cli("resume", jd, "--quiet")
    assert res.returncode == 0, res.stdout + res.stderr
    d = job_json(jd)
    assert d["state"] == "succeeded" and d["attempts"][0]["state"] == "lost"
    assert d["attempts"][0]["failure"]["reason"] == "launcher"
    start = d["attempts"][1]["resume"]["global_step"]
    assert start >= 5
    for r in (0, 1):
        evs = [json.loads(l) for l in (jd / "events" / f"rank_{r}.jsonl").read_text().splitlines()]
        assert [e["global_step"] for e in evs if e["event"] == "step" and e["attempt"] == 1] == list(range(start + 1, 61))


def test_logs_follow_and_status_of_a_running_job(tmp_path):
    jd = tmp_path / "job"
    proc = start_launcher(jd, "--steps 60 --step-time 0.05")
    try:
        wait_for(lambda: (jd / "events" / "rank_0.jsonl").exists() and
                 '"step"' in (jd / "events" / "rank_0.jsonl").read_text(), what="a step event")
        st = cli("status", jd)
        assert "RUNNING (launcher running)" in st.stdout and "rank 0: epoch 1 step" in st.stdout
        follow = cli("logs", jd, "-f", "--rank", "0", timeout=60)   # returns when the job ends
        assert follow.returncode == 0
        assert "rank 0: starting attempt 0" in follow.stdout and follow.stdout.rstrip().endswith("rank 0: done")
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0


def test_a_finished_job_gets_its_report_unless_told_not_to(tmp_path):
    job = tmp_path / "job"
    proc = start_launcher(job, "--epochs 2 --steps 3 --step-time 0.01", report=True)
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out
    summary = job / "report" / "summary.md"
    # the launcher leaves the plotting to a detached process: its exit does not wait for the plots
    wait_for(lambda: summary.is_file() and "png" in summary.read_text(), what="the report", timeout=60)
    text = summary.read_text()
    assert "state succeeded" in text
    rows = [line for line in text.splitlines() if line.startswith("| 0 |") or line.startswith("| 1 |")]
    assert len(rows) == 2 and all("| finished | 2/2 | 6 |" in r for r in rows), text
    assert sorted(p.name for p in (job / "report").glob("*.png")), "no plots written"
    assert f"report: {summary}" in out

    quiet = tmp_path / "no-report"
    proc = start_launcher(quiet, "--epochs 1 --steps 2 --step-time 0.01")
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out
    assert not (quiet / "report" / "summary.md").exists()
