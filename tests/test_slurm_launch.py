"""`pspnet-cluster launch` and `submit` on a real two-node Slurm, with fake ranks (tests/workers/fake_worker.py:
seconds, no MindSpore): inside salloc, as a batch job, a killed rank restarting from the common
checkpoint in a new step, scancel leaving a resumable job, the time-limit warning requeueing the job
which then resumes by itself, and the errors that start nothing."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.slurm import slurm_cluster  # noqa: F401  (fixture)

pytestmark = pytest.mark.slurm
ROOT = Path(__file__).resolve().parent.parent
FAKE = ROOT / "tests" / "workers" / "fake_worker.py"


def _env(cluster):
    env = cluster.env()
    env["PYTHONPATH"] = str(ROOT)
    return env


def _cli(args, cwd, env, prefix=(), timeout=120):
    return subprocess.run([*prefix, sys.executable, "-m", "orchestrator.cli", *args], cwd=str(cwd), env=env,
                          capture_output=True, text=True, timeout=timeout)


def _fake(*args):
    return f"python {FAKE} " + " ".join(args)


def _job(job_dir):
    return json.loads((Path(job_dir) / "job.json").read_text())


def _events(job_dir, rank):
    p = Path(job_dir) / "events" / f"rank_{rank}.jsonl"
    return [json.loads(l) for l in p.read_text().splitlines()] if p.exists() else []


SALLOC = ("salloc", "--nodes=2", "--ntasks-per-node=2")


def test_launch_inside_salloc_runs_ranks_on_both_nodes(slurm_cluster, tmp_path):
    job = tmp_path / "job"
    res = _cli(["launch", "--devices", "2", "--cmd", _fake("--steps", "3"), "--job-dir", str(job), "--quiet",
                "--no-report"], tmp_path, _env(slurm_cluster), prefix=SALLOC)
    assert res.returncode == 0, res.stdout + res.stderr
    d = _job(job)
    assert d["state"] == "succeeded" and d["spec"]["launcher"] == "slurm"     # detected from SLURM_JOB_ID
    assert {a["host"] for a in d["attempts"][0]["ranks"].values()} == {"node1", "node2"}
    for r in range(4):
        assert {e["host"] for e in _events(job, r)} == {"node1" if r < 2 else "node2"}
        assert [e["global_step"] for e in _events(job, r) if e["event"] == "step"] == [1, 2, 3]


def test_dry_run_shows_the_srun_line_and_starts_nothing(slurm_cluster, tmp_path):
    job = tmp_path / "job"
    res = _cli(["launch", "--launcher", "slurm", "--devices", "2", "--cmd", _fake(), "--job-dir", str(job),
                "--dry-run"], tmp_path, _env(slurm_cluster), prefix=SALLOC)
    assert res.returncode == 0, res.stderr
    srun = next(l for l in res.stdout.splitlines() if "srun " in l)
    for part in ("--nodes=2", "--ntasks=4", "--ntasks-per-node=2", "--kill-on-bad-exit=1", "--label",
                 "-S ", "cluster/slurm_task.py run"):
        assert part in srun
    assert not (job / "job.json").exists() and not (job / "slurm").exists()


def test_killed_rank_restarts_in_a_new_step_from_the_common_checkpoint(slurm_cluster, tmp_path):
    job = tmp_path / "job"
    res = _cli(["launch", "--devices", "2", "--max-restarts", "1", "--job-dir", str(job), "--quiet", "--no-report",
                "--cmd", _fake("--steps", "40", "--step-time", "0.1", "--ckpt-every", "5", "--kill-self-at", "30",
                               "--bad-rank", "3")],
               tmp_path, _env(slurm_cluster), prefix=SALLOC)
    assert res.returncode == 0, res.stdout + res.stderr
    d = _job(job)
    a0, a1 = d["attempts"]
    assert a0["failure"]["rank"] == 3 and a0["failure"]["signal"] == "SIGKILL"
    # the whole step went down (the fake scheduler ends by itself at once)
    assert all(r["exit_code"] not in (None, 0) for k, r in a0["ranks"].items() if k != "scheduler")
    assert a1["state"] == "succeeded" and all(r["exit_code"] == 0 for r in a1["ranks"].values())
    resumed = a1["resume"]["global_step"]            # the newest step every rank had saved (nodes start apart)
    assert resumed in (5, 10, 15, 20, 25)
    for r in range(4):
        again = [e["global_step"] for e in _events(job, r) if e["event"] == "step" and e["attempt"] == 1]
        assert again == list(range(resumed + 1, 41))


def test_launcher_slurm_outside_an_allocation_is_refused(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PYTHONPATH"] = str(ROOT)
    res = _cli(["launch", "--launcher", "slurm", "--devices", "1", "--cmd", _fake(), "--job-dir",
                str(tmp_path / "job")], tmp_path, env)
    assert res.returncode == 2
    assert "not inside a Slurm allocation (SLURM_JOB_ID is not set)" in res.stderr
    assert not (tmp_path / "job" / "job.json").exists()


def test_srun_missing_is_refused(tmp_path):
    env = {"PATH": "/nonexistent", "PYTHONPATH": str(ROOT), "SLURM_JOB_ID": "5", "SLURM_JOB_NODELIST": "n[1-2]",
           "HOME": str(tmp_path)}
    res = _cli(["launch", "--launcher", "slurm", "--devices", "1", "--cmd", _fake(), "--job-dir",
                str(tmp_path / "job")], tmp_path, env)
    assert res.returncode == 2 and "srun not found on PATH" in res.stderr


def _submit(cluster, tmp_path, job_id, *extra, fake=("--steps", "4")):
    res = _cli(["submit", "--nodes", "2", "--devices", "2", "--time", "0:10:00", "--job-id", job_id, *extra,
                "--cmd", _fake(*fake)], tmp_path, _env(cluster))
    assert res.returncode == 0, res.stderr
    slurm_id = res.stdout.split("submitted Slurm job ")[1].split()[0]
    return slurm_id, tmp_path / "runs" / job_id


def _wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_submit_runs_to_succeeded_and_status_shows_slurm(slurm_cluster, tmp_path):
    slurm_id, job = _submit(slurm_cluster, tmp_path, "sub1")
    assert slurm_cluster.wait_job(slurm_id, 120) == "COMPLETED", (job / "slurm" / f"batch-{slurm_id}.out").read_text()
    d = _job(job)
    assert d["state"] == "succeeded"
    assert {a["host"] for a in d["attempts"][0]["ranks"].values()} == {"node1", "node2"}
    res = _cli(["status", str(job), "--json"], tmp_path, _env(slurm_cluster))
    assert res.returncode == 0
    st = json.loads(res.stdout)
    assert json.dumps(st).count(slurm_id) >= 1 and "COMPLETED" in json.dumps(st)


def test_scancel_leaves_a_resumable_job_that_sbatch_continues(slurm_cluster, tmp_path):
    slurm_id, job = _submit(slurm_cluster, tmp_path, "cancel1",
                            fake=("--steps", "100", "--step-time", "0.05", "--ckpt-every", "5"))
    _wait_for(lambda: any(e["event"] == "checkpoint" for r in range(4) for e in _events(job, r)
                          if e.get("global_step", 0) >= 10) and
              all(any(e["event"] == "checkpoint" for e in _events(job, r)) for r in range(4)), 120, "checkpoints")
    slurm_cluster.run(["scancel", slurm_id])
    assert slurm_cluster.wait_job(slurm_id, 60) == "CANCELLED"
    _wait_for(lambda: _job(job)["state"] == "stopped", 30, "job.json to say stopped")
    # the same script, submitted again by hand, continues the job
    res = slurm_cluster.run(["sbatch", "--parsable", str(job / "job.sbatch")], env=_env(slurm_cluster),
                            cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr
    again = res.stdout.strip()
    assert slurm_cluster.wait_job(again, 180) == "COMPLETED", (job / "slurm" / f"batch-{again}.out").read_text()
    d = _job(job)
    assert d["state"] == "succeeded" and d["attempts"][-1]["resume"]["global_step"] >= 5


def test_time_limit_warning_requeues_and_the_job_resumes_by_itself(slurm_cluster, tmp_path):
    slurm_id, job = _submit(slurm_cluster, tmp_path, "rq1", "--requeue",
                            fake=("--steps", "120", "--step-time", "0.05", "--ckpt-every", "5"))
    _wait_for(lambda: all(any(e["event"] == "checkpoint" for e in _events(job, r)) for r in range(4)), 120,
              "checkpoints")
    # what Slurm sends --warn seconds before the time limit
    slurm_cluster.run(["scancel", "--batch", "--signal=USR1", slurm_id])
    _wait_for(lambda: "Restarts=1" in slurm_cluster.run(["scontrol", "-o", "show", "job", slurm_id]).stdout, 60,
              "the job to be requeued")
    # slurmd refuses a job credential made in the same second as the old run's kill ("Job credential
    # revoked": both times are whole seconds), which Slurm's own 2-minute requeue delay avoids
    time.sleep(1.1)
    # a requeued job waits ~2 minutes before it may start again; an administrator's nudge
    _wait_for(lambda: slurm_cluster.run(["scontrol", "update", f"JobId={slurm_id}", "StartTime=now"]).returncode == 0,
              30, "the requeued job to accept a start time")
    assert slurm_cluster.wait_job(slurm_id, 180, states=("COMPLETED", "FAILED", "CANCELLED")) == "COMPLETED"
    d = _job(job)
    assert d["state"] == "succeeded"
    assert d["attempts"][0]["state"] == "stopped" and d["attempts"][-1]["resume"] is not None


def test_a_queued_job_shows_slurms_state_and_stop_cancels_it(slurm_cluster, tmp_path):
    # holds every CPU of both nodes, so the submitted job stays queued
    res = slurm_cluster.run(["sbatch", "--parsable", "--nodes=2", "--exclusive", "--output=/dev/null", "--wrap", "sleep 120"])
    blocker = res.stdout.strip()
    try:
        assert slurm_cluster.wait_job(blocker, 30, states=("RUNNING",)) == "RUNNING"
        slurm_id, job = _submit(slurm_cluster, tmp_path, "queued")
        res = _cli(["status", str(job)], tmp_path, _env(slurm_cluster))
        assert res.returncode == 0, res.stderr
        assert "SUBMITTED" in res.stdout and f"slurm_job: {slurm_id}" in res.stdout
        assert "slurm_state: PENDING" in res.stdout
        res = _cli(["stop", str(job)], tmp_path, _env(slurm_cluster))
        assert res.returncode == 0 and f"scancel {slurm_id}" in res.stdout
        assert slurm_cluster.wait_job(slurm_id, 30) == "CANCELLED"
    finally:
        slurm_cluster.run(["scancel", blocker])


def test_stop_cancels_a_batch_job_whose_launcher_runs_on_another_node(slurm_cluster, tmp_path):
    slurm_id, job = _submit(slurm_cluster, tmp_path, "stop1", fake=("--steps", "400", "--step-time", "0.05"))
    _wait_for(lambda: all(any(e["event"] == "step" for e in _events(job, r)) for r in range(4)), 120, "steps")
    # on a real cluster the launcher runs on the batch node, not where `stop` is typed
    pid_file = job / "launcher.pid"
    who = json.loads(pid_file.read_text())
    pid_file.write_text(json.dumps({**who, "host": "batch-node-elsewhere"}))
    res = _cli(["stop", str(job)], tmp_path, _env(slurm_cluster))
    assert res.returncode == 0, res.stderr
    assert f"scancel {slurm_id}: Slurm job cancelled" in res.stdout
    assert slurm_cluster.wait_job(slurm_id, 60) == "CANCELLED"
    _wait_for(lambda: _job(job)["state"] == "stopped", 30, "job.json to say stopped")
