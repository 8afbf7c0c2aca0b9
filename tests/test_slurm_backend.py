"""The Slurm backend against a real two-node Slurm, with fake ranks (fast): one srun step per attempt,
ranks placed over both nodes, each rank's output in its own log and event file, the rank environment
as the other launchers give it, a killed rank bringing the whole step down, and clear preflight errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.slurm import slurm_cluster  # noqa: F401  (fixture)

pytestmark = pytest.mark.slurm
ROOT = Path(__file__).resolve().parent.parent
DRIVER = ROOT / "tests" / "workers" / "slurm_step_driver.py"


def _drive(cluster, job, devices="2", alloc=("-N2", "--ntasks-per-node=2"), extra=()):
    env = cluster.env()
    env["PYTHONPATH"] = str(ROOT)
    res = subprocess.run(["salloc", *alloc, sys.executable, str(DRIVER), str(job), devices, *extra],
                         env=env, capture_output=True, text=True, timeout=120, cwd=str(job.parent))
    for line in res.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):]), res
    return None, res


def _events(job, rank):
    return [json.loads(l) for l in (job / "events" / f"rank_{rank}.jsonl").read_text().splitlines()]


def test_four_ranks_on_two_nodes_as_one_step(slurm_cluster, tmp_path):
    job = tmp_path / "job"
    out, res = _drive(slurm_cluster, job, extra=("--steps", "3", "--step-time", "0.4", "--print-env"))
    assert out is not None, res.stdout + res.stderr
    assert out["outcome"] == "succeeded" and set(out["exit_codes"].values()) == {0}
    assert out["servers"] == ["node1", "node2"]
    assert out["nodes"] == {"scheduler": "node1", "rank_0": "node1", "rank_1": "node1", "rank_2": "node2",
                            "rank_3": "node2"}
    assert "--kill-on-bad-exit=1" in out["srun"] and "--ntasks-per-node=2" in out["srun"]
    host, port = out["rendezvous"]
    assert host == "127.0.0.1" and 20000 <= port < 32768
    for r in range(4):
        env = json.loads(next(l for l in (job / "logs" / f"rank_{r}.log").read_text().splitlines()
                              if l.startswith("ENV "))[4:])
        assert env["RANK_ID"] == str(r) and env["RANK_SIZE"] == "4"
        assert env["DEVICE_ID"] == str(r % 2) and env["PSPNET_LOCAL_RANK"] == str(r % 2)
        assert env["MS_SCHED_HOST"] == host and env["MS_SCHED_PORT"] == str(port) and env["MS_WORKER_NUM"] == "4"
        evs = _events(job, r)
        assert {e["host"] for e in evs} == {"node1" if r < 2 else "node2"}
        assert [e["global_step"] for e in evs if e["event"] == "step"] == [1, 2, 3]
    assert "fake scheduler" in (job / "logs" / "scheduler.log").read_text()
    # each task reports its rank's CPU and memory (the metrics exporter's per-rank figures)
    assert sorted(out["stats"]) == ["0", "1", "2", "3"]
    assert all(s["rss_bytes"] > 1e6 and s["cpu_seconds"] >= 0 for s in out["stats"].values())


def test_a_killed_rank_takes_the_step_down_and_is_named(slurm_cluster, tmp_path):
    job = tmp_path / "job"
    out, res = _drive(slurm_cluster, job, extra=("--steps", "200", "--step-time", "0.05", "--kill-self-at", "3",
                                                 "--bad-rank", "3"))
    assert out is not None, res.stdout + res.stderr
    assert out["outcome"] == "failed"
    f = out["failure"]
    assert f["rank"] == 3 and f["signal"] == "SIGKILL"
    codes = out["exit_codes"]
    assert all(c is not None for c in codes.values()), codes                 # every task is gone
    # no rank ran to its end; the fake scheduler returns 0 as soon as it has printed its line, and whether
    # its exit is reported before the step's SIGKILL depends on timing, so it is left out here
    assert all(codes[f"rank_{r}"] not in (None, 0) for r in range(4)), codes
    assert out["group_down_s"] < 10


def test_more_ranks_per_node_than_the_job_holds_is_refused(slurm_cluster, tmp_path):
    job = tmp_path / "job"
    out, res = _drive(slurm_cluster, job, devices="3", alloc=("-N2", "--ntasks-per-node=1"))
    assert out is None
    assert "--devices 3: 3 rank(s) per node, but this Slurm job holds 1 CPU(s) on node1" in res.stderr
    assert not (job / "slurm").exists()              # no attempt: nothing started


def test_a_node_that_does_not_see_the_job_dir_fails_preflight(slurm_cluster, tmp_path):
    job = slurm_cluster.node1_only / f"job-{tmp_path.name}"
    out, res = _drive(slurm_cluster, job)
    assert out is None
    assert f"node2: does not see the job dir {job}" in res.stderr
    assert "node1:" not in res.stderr.split("preflight")[-1]          # node1 sees it: only node2 is named
    assert not (job / "slurm").exists()


DISCOVER = """
import json, sys
sys.path.insert(0, sys.argv[1])
from orchestrator.backends.slurm import SlurmBackend
from orchestrator.jobspec import JobSpec
spec = JobSpec(devices="2", backend="ascend", hccn_conf=sys.argv[3], npu_smi=sys.argv[4], job_id="asc",
               job_dir=sys.argv[2], cwd=sys.argv[2])
with SlurmBackend(spec) as b:
    print("SERVERS " + json.dumps([s.to_dict() for s in b.discover()]))
"""


def test_ascend_devices_and_their_ips_come_from_each_node(slurm_cluster, tmp_path, fixtures_dir):
    env = slurm_cluster.env()
    env["PYTHONPATH"] = str(ROOT)
    res = subprocess.run(["salloc", "-N2", "--ntasks-per-node=2", sys.executable, "-c", DISCOVER, str(ROOT),
                          str(tmp_path / "job"), str(fixtures_dir / "hccn.conf"),
                          str(fixtures_dir / "npu-smi-910b4-2dev.txt")],
                         env=env, capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    line = next((l for l in res.stdout.splitlines() if l.startswith("SERVERS ")), None)
    assert line is not None, res.stdout + res.stderr
    servers = json.loads(line[len("SERVERS "):])
    assert [s["host"] for s in servers] == ["node1", "node2"]
    for s in servers:
        assert s["server_id"] == "127.0.0.1"                       # the node's NodeAddr, for the rank table
        assert [(d["device_id"], d["ip"]) for d in s["devices"]] == [(0, "192.168.100.101"), (1, "192.168.101.101")]
