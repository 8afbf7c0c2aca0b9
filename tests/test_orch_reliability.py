"""What a careless or hostile user does to a job, with fake ranks, real processes and real files:
two owners of one job dir, stale pid files, processes left behind, floods, file faults."""
import json
import os
import signal
import subprocess
import sys
import time
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


# ---------------------------------------------------------------- file faults

def _no_traceback(text):
    assert "Traceback" not in text, text


def test_disk_full_fails_the_job_cleanly_with_the_failure_block(tmp_path):
    import resource
    jd = tmp_path / "job"

    def small_disk():   # every file the launcher writes stops growing at 200 kB (EFBIG, like ENOSPC)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    p = subprocess.Popen(launch_argv(jd, "--steps 2000 --step-time 0.01 --flood 30"), cwd=str(ROOT), env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=small_disk)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1, out + err
    _no_traceback(out + err)
    assert "FAILED" in out and "cannot be saved" in out and "File too large" in out
    d = job_json(jd)
    assert d["state"] == "failed" and d["attempts"][0]["failure"]["reason"] == "io"
    assert len(d["attempts"]) == 1                  # not restarted into the same full disk


def test_a_deleted_events_file_is_recreated_and_the_rank_stays_visible(tmp_path):
    jd = tmp_path / "job"
    p = start(jd, "--steps 60 --step-time 0.05")
    ev = jd / "events" / "rank_1.jsonl"
    wait_for(lambda: len(step_events(jd, 1)) >= 3, what="steps")
    ev.unlink()
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, out + err
    assert [e["global_step"] for e in step_events(jd, 1)] == list(range(1, 61))    # not one event lost
    st = json.loads(cli("status", jd, "--json").stdout)
    assert st["progress"]["1"]["global_step"] == 60


def test_a_log_path_replaced_by_a_directory_fails_the_resume_cleanly(tmp_path):
    jd = tmp_path / "job"
    res = subprocess.run(launch_argv(jd, "--steps 5 --crash-at 2 --bad-rank 0"), cwd=str(ROOT), env=ENV,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    log = jd / "logs" / "rank_1.log"
    log.unlink()
    log.mkdir()
    res = cli("resume", jd, "--quiet")
    assert res.returncode == 1, res.stdout + res.stderr
    _no_traceback(res.stdout + res.stderr)
    assert "FAILED" in res.stdout and "rank_1.log" in res.stdout and "Is a directory" in res.stdout
    assert job_json(jd)["state"] == "failed"


def test_job_json_that_cannot_be_written_fails_the_job_without_a_traceback(tmp_path):
    jd, pids = tmp_path / "job", tmp_path / "pids"
    pids.mkdir()
    p = start(jd, f"--steps 2000 --step-time 0.05 --crash-at 20 --pid-file-dir {pids}")
    wait_for(lambda: len(step_events(jd, 1)) >= 3, what="steps")
    (jd / "job.json").unlink()
    (jd / "job.json").mkdir()          # the next save of the job's state fails
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1, out + err
    _no_traceback(out + err)
    assert "FAILED" in out and "job.json" in out
    ranks = [int((pids / f"rank_{r}.pid").read_text()) for r in (0, 1)]
    wait_for(lambda: not any(alive(r) for r in ranks), timeout=5, what="the ranks to be down")


def test_saved_last_lines_are_bounded_in_count_and_length(tmp_path):
    jd = tmp_path / "job"
    res = subprocess.run(launch_argv(jd, "--steps 5 --crash-at 2 --big-line 3000000", devices="1"),
                         cwd=str(ROOT), env=ENV, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    size = (jd / "job.json").stat().st_size
    assert size < 200_000, size
    lines = job_json(jd)["attempts"][0]["failure"]["last_lines"]
    assert 0 < len(lines) <= 20 and max(map(len, lines)) < 3000
    assert any("more characters in the log" in l for l in lines)
    assert (jd / "logs" / "rank_0.log").stat().st_size > 1_000_000    # the log keeps it (up to the line cap)


# ---------------------------------------------------------------- restart backoff

def test_backoff_doubles_to_a_cap_and_starts_again_after_a_healthy_attempt():
    from orchestrator.restart_policy import decide_restart
    delays, streak = [], 0
    for done in range(8):
        d = decide_restart("failed", "exit", done, 10, ran_s=0.5, streak=streak)
        assert d.restart
        delays.append(d.delay_s)
        streak = d.streak
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]
    healthy = decide_restart("failed", "exit", 8, 10, ran_s=600, streak=streak)
    assert healthy.restart and healthy.delay_s == 1
    assert not decide_restart("failed", "exit", 10, 10, streak=streak).restart
    assert not decide_restart("failed", "io", 0, 10).restart
    assert not decide_restart("stopped", None, 0, 10).restart


def test_restarts_wait_longer_each_time_and_status_shows_the_wait(tmp_path):
    jd = tmp_path / "job"
    p = start(jd, "--steps 3 --crash-at 1 --bad-attempt -1", "--max-restarts", "3", devices="1")
    try:
        wait_for(lambda: (jd / "job.json").exists() and '"restart": 3' in (jd / "job.json").read_text(),
                 timeout=60, what="the third backoff")
        p.send_signal(signal.SIGSTOP)      # hold the launcher inside its wait while status looks
        try:
            st = cli("status", jd).stdout
        finally:
            p.send_signal(signal.SIGCONT)
        assert "RESTARTING" in st and "backoff: restart 3 of 3 in " in st, st
    finally:
        out, err = p.communicate(timeout=60)
    assert p.returncode == 1, out + err
    starts = [a["start"] for a in job_json(jd)["attempts"]]
    assert len(starts) == 4
    assert starts[1] - starts[0] >= 1.0 and starts[2] - starts[1] >= 2.0 and starts[3] - starts[2] >= 4.0


# ---------------------------------------------------------------- bad input is exit 2, never a traceback

def _exit2(*args):
    res = cli(*args)
    assert res.returncode == 2, (args, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    return res.stderr


def test_numbers_must_be_finite_and_in_range(tmp_path):
    jd = tmp_path / "j"
    base = ("launch", "--devices", "1", "--job-dir", jd, "--cmd", f"python {FAKE}")
    for flag, value in (("--hang-timeout", "nan"), ("--hang-timeout", "inf"), ("--grace", "1e309"),
                        ("--startup-timeout", "-1"), ("--failure-grace", "nan"),
                        ("--max-restarts", "99999999999999999999"), ("--max-restarts", "1001")):
        assert flag.lstrip("-").replace("-", "_") in _exit2(*base, flag, value)
    assert not jd.exists()
    for args in (("metrics", tmp_path, "--port", "70000"), ("metrics", tmp_path, "--port", "-5"),
                 ("summary", tmp_path, "--window", "-1"), ("top", tmp_path, "--window", "-1", "--once")):
        assert "give" in _exit2(*args)


def test_unsplittable_commands_unknown_hosts_and_binary_specs_are_exit_2(tmp_path):
    jd = tmp_path / "j"
    assert "quotes" in _exit2("launch", "--devices", "1", "--job-dir", jd, "--cmd", "'x")
    assert "unknown host" in _exit2("launch", "--devices", "1", "--job-dir", jd, "--sched-host", "nosuchhost.invalid",
                                    "--cmd", f"python {FAKE}")
    blob = tmp_path / "spec.bin"
    blob.write_bytes(bytes(range(256)) * 4)
    assert "not a text file" in _exit2("launch", "--spec", blob, "--job-dir", jd)
    assert not jd.exists()


def test_report_only_writes_into_a_job_dir(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    assert "not a job dir" in _exit2("report", plain)
    assert list(plain.iterdir()) == []
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert "a file" in _exit2("report", f)


def test_a_non_empty_dir_without_job_json_is_not_a_job_dir(tmp_path):
    jd = tmp_path / "old"
    (jd / "events").mkdir(parents=True)
    (jd / "events" / "rank_0.jsonl").write_text('{"event": "step", "global_step": 99}\n')
    assert "not empty" in _exit2("launch", "--devices", "1", "--job-dir", jd, "--cmd", f"python {FAKE}")
    assert not (jd / "job.json").exists()


# ---------------------------------------------------------------- damaged checkpoints

def test_damaged_checkpoint_metadata_is_skipped_and_resume_never_blocks(tmp_path):
    jd = tmp_path / "job"
    res = subprocess.run(launch_argv(jd, "--steps 12 --ckpt-every 4 --crash-at 10 --bad-rank 0"), cwd=str(ROOT),
                         env=ENV, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    ck0 = sorted((jd / "ckpt" / "rank_0").glob("*.ckpt"))
    assert [c.name for c in ck0][-1].endswith("s00000008.ckpt")
    # step 8 of rank 0: the metadata says 1e999; step 4 of rank 1: a FIFO where the .ckpt should be
    side = ck0[-1].with_name(ck0[-1].name + ".json")
    side.write_text(side.read_text().replace('"global_step": 8', '"global_step": 1e999'))
    ck1 = sorted((jd / "ckpt" / "rank_1").glob("*.ckpt"))
    ck1[0].unlink()
    os.mkfifo(ck1[0])
    res = cli("resume", jd, "--quiet", timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and "skipped" in res.stderr
    # neither step 8 (rank 0's metadata is damaged) nor step 4 (rank 1's file is a FIFO) is common: scratch
    a1 = job_json(jd)["attempts"][1]
    assert a1["resume"] is None


# ---------------------------------------------------------------- adaptive hang detection

def _feed(sink, kind, t, **fields):
    sink._note({"event": kind, **fields}, t)


def test_hang_limit_follows_the_ranks_own_step_times_and_allows_for_phases(tmp_path):
    from orchestrator.capture import RankSink
    sink = RankSink("rank_0", tmp_path / "r.log", tmp_path / "r.jsonl")
    t = 100.0
    _feed(sink, "compiled", t)
    for gs in range(1, 6):
        t += 0.2
        _feed(sink, "step", t, global_step=gs, epoch=1, step=gs, steps_per_epoch=100)
    assert sink.hang_limit(10, 4) is None                        # not steady yet
    for gs in range(6, 30):
        t += 0.2
        _feed(sink, "step", t, global_step=gs, epoch=1, step=gs, steps_per_epoch=100)
    assert sink.hang_limit(10, 4) == pytest.approx(4.0)          # max(4 s, 10 x 0.2 s)
    assert sink.hang_limit(10, 1) == pytest.approx(2.0)
    _feed(sink, "phase", t + 0.1, phase="validation")
    assert sink.hang_limit(10, 4) is None                        # validation under way
    _feed(sink, "step", t + 30, global_step=30, epoch=1, step=30, steps_per_epoch=100)
    assert sink.step_p95() == pytest.approx(0.2)                 # the validation gap is not a step time
    _feed(sink, "step", t + 30.2, global_step=100, epoch=1, step=100, steps_per_epoch=100)
    assert sink.hang_limit(10, 4) is None                        # epoch end: validation may follow unannounced
    sink.close()


def test_a_rank_that_stops_stepping_is_hung_in_seconds_not_at_the_fixed_timeout(tmp_path):
    jd = tmp_path / "job"
    t0 = time.monotonic()
    res = subprocess.run(launch_argv(jd, "--steps 400 --step-time 0.05 --hang-at 60 --bad-rank 1",
                                     "--hang-timeout", "900"), cwd=str(ROOT), env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stdout + res.stderr
    assert time.monotonic() - t0 < 100                            # far from 900 s
    f = job_json(jd)["attempts"][0]["failure"]
    assert f["reason"] == "hang" and f["rank"] == 1 and "sent no step" in f["message"]
    assert any(s.startswith("rank_1: step 59 ") for s in f["last_seen"]), f["last_seen"]
    assert any(s.startswith("rank_0: ") for s in f["last_seen"])
    assert "last seen: " in res.stdout


def test_announced_validation_and_checkpoints_longer_than_the_limit_are_not_hangs(tmp_path):
    jd = tmp_path / "job"
    res = subprocess.run(launch_argv(jd, "--epochs 2 --steps 40 --step-time 0.02 --ckpt-every 30 --ckpt-time 5 "
                                         "--val-time 5", "--hang-timeout", "900"),
                         cwd=str(ROOT), env=ENV, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
