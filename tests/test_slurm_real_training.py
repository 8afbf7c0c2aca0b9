"""The real trainer (MindSpore, CPU dynamic cluster, tiny crops) as a Slurm batch job: slow, runs in CI.

One job covers what the issue asks of a real Slurm run, to keep CI time down: `submit` a 2-node job
(one rank per node: this machine has 2 cores, and two ranks per node would more than double the time),
SIGKILL rank 1 after the epoch-1 checkpoint, `--max-restarts 1`.  Slurm must take the whole step down,
the launcher must start a new step in the same allocation from the common checkpoint, and the job must
end SUCCEEDED with events from both nodes.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.slurm import slurm_cluster  # noqa: F401  (fixture)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
OVERRIDES = ["crop_size=65", "batch_size=2", "max_steps_per_epoch=1", "epochs=2", "synth_images=8",
             "val_every=0", "keep_checkpoints=2", "workers=1"]


def _events(job_dir, rank):
    path = Path(job_dir) / "events" / f"rank_{rank}.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


def test_submitted_two_node_job_survives_kill9_of_a_rank(slurm_cluster, tmp_path):
    env = slurm_cluster.env()
    env["PYTHONPATH"] = str(ROOT)
    res = subprocess.run([sys.executable, "-m", "orchestrator.cli", "submit", "--nodes", "2", "--devices", "1",
                          "--time", "1:00:00", "--job-id", "real", "--max-restarts", "1", "--",
                          f"data_root={tmp_path / 'data'}", *OVERRIDES],
                         cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    slurm_id = res.stdout.split("submitted Slurm job ")[1].split()[0]
    job = tmp_path / "runs" / "real"
    out = job / "slurm" / f"batch-{slurm_id}.out"
    deadline = time.monotonic() + 1200
    while not all(list((job / "ckpt" / f"rank_{r}").glob("pspnet_e0001_*.ckpt.json")) for r in (0, 1)):
        state = slurm_cluster.job_state(slurm_id)
        assert state in ("PENDING", "RUNNING", "CONFIGURING"), f"{state}: {out.read_text() if out.exists() else ''}"
        assert time.monotonic() < deadline, "no epoch-1 checkpoints in time"
        time.sleep(0.5)
    d = json.loads((job / "job.json").read_text())
    os.kill(d["attempts"][0]["ranks"]["1"]["pid"], signal.SIGKILL)     # node2's rank (same machine here)
    final = slurm_cluster.wait_job(slurm_id, 1100)   # both waits stay inside the slow-test timeout
    assert final == "COMPLETED", out.read_text()
    d = json.loads((job / "job.json").read_text())
    assert d["state"] == "succeeded"
    a0, a1 = d["attempts"]
    assert a0["failure"]["rank"] == 1 and a0["failure"]["signal"] == "SIGKILL"
    assert all(r["exit_code"] is not None for r in a0["ranks"].values())    # the whole step went down
    assert a1["resume"]["global_step"] == 1 and a1["state"] == "succeeded"
    hosts = {e["host"] for r in (0, 1) for e in _events(job, r)}
    assert hosts == {"node1", "node2"}
    for r in (0, 1):
        evs = _events(job, r)
        assert [e["global_step"] for e in evs if e["event"] == "step" and e["attempt"] == 1] == [2]
        assert any(e["event"] == "finished" and e["attempt"] == 1 for e in evs)
