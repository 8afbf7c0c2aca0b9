"""Slurm's host lists, per-node counts, job environment and scheduler ports, without Slurm running."""
import pytest

from cluster.slurm import (PORT_ATTEMPTS, PORT_BASE, PORT_SLOTS, SlurmEnv, SlurmError, expand_counts,
                           expand_hostlist, scheduler_port)


@pytest.mark.parametrize("text, names", [
    ("node1", ["node1"]),
    ("node[1-3,5],gpu[01-02]", ["node1", "node2", "node3", "node5", "gpu01", "gpu02"]),
    ("n[8-10]", ["n8", "n9", "n10"]),
    ("n[098-101]", ["n098", "n099", "n100", "n101"]),
    ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
    ("a[1-2]-ib,b", ["a1-ib", "a2-ib", "b"]),
    ("", []),
])
def test_hostlist_expands_as_slurm_does(text, names):
    assert expand_hostlist(text) == names


@pytest.mark.parametrize("bad", ["node[1-3", "node1-3]", "node[3-1]", "node[a-b]"])
def test_bad_hostlist_is_a_clear_error(bad):
    with pytest.raises(SlurmError, match="host list"):
        expand_hostlist(bad)


def test_per_node_counts():
    assert expand_counts("2(x3),1") == [2, 2, 2, 1]
    assert expand_counts("8") == [8]
    with pytest.raises(SlurmError):
        expand_counts("2(y3)")


def test_slurm_env_outside_and_inside_a_task():
    assert SlurmEnv.from_env({}) is None
    env = {"SLURM_JOB_ID": "77", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_JOB_CPUS_PER_NODE": "4(x2)",
           "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURMD_NODENAME": "node2",
           "SLURM_NTASKS": "4", "SLURM_JOB_PARTITION": "debug"}
    s = SlurmEnv.from_env(env)
    assert s.job_id == "77" and s.nodes == ["node1", "node2"] and s.cpus_of("node2") == 4
    assert (s.procid, s.localid, s.nodeid, s.node_name, s.ntasks) == (3, 1, 1, "node2", 4)
    assert s.partition == "debug"
    with pytest.raises(SlurmError, match="SLURM_JOB_NODELIST"):
        SlurmEnv.from_env({"SLURM_JOB_ID": "5"})


def test_scheduler_port_is_stable_high_and_distinct_for_nearby_jobs():
    assert scheduler_port("1234", 0) == scheduler_port("1234", 0)
    ports = {scheduler_port(str(j), a) for j in range(1000, 1000 + PORT_SLOTS) for a in range(PORT_ATTEMPTS)}
    assert len(ports) == PORT_SLOTS * PORT_ATTEMPTS          # no two (job, attempt) pairs share a port
    assert min(ports) >= PORT_BASE and max(ports) < 32768    # below the ephemeral range
    assert scheduler_port("1234", 1) != scheduler_port("1234", 0)


def test_task_wrapper_keeps_a_rank_line_whole_while_it_reports(tmp_path):
    """The wrapper's own lines (pid, stats, exit) share the task's stdout with the rank's: a rank that
    writes a line in two pieces must still arrive as one line, and the exit must be reported."""
    import json
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    worker = tmp_path / "w.py"
    worker.write_text("import os, time\nfor i in range(300):\n    os.write(1, b'piece-a ')\n"
                      "    time.sleep(0.001)\n    os.write(1, b'piece-b\\n')\nraise SystemExit(3)\n")
    attempt = tmp_path / "attempt.json"
    attempt.write_text(json.dumps({"tasks": [None, {"rank": 1, "local_rank": 1, "host": "n1",
                                                    "argv": [sys.executable, str(worker)], "env": {"RANK_ID": "1"},
                                                    "cwd": str(tmp_path)}],
                                   "stats_every": 0.002}))
    env = {"PATH": "/usr/bin:/bin", "SLURM_PROCID": "1", "SLURM_LOCALID": "1", "SLURMD_NODENAME": "n1"}
    res = subprocess.run([sys.executable, "-S", str(root / "cluster" / "slurm_task.py"), "run", str(attempt)],
                         env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 3, res.stderr
    lines = res.stdout.splitlines()
    rank_lines = [l for l in lines if not l.startswith("@@pspnet-slurm ")]
    assert rank_lines == ["piece-a piece-b"] * 300
    assert sum(l.startswith("@@pspnet-slurm stats ") for l in lines) > 3
    assert lines[-1] == "@@pspnet-slurm exit 3"


def test_task_wrapper_refuses_a_task_slurm_placed_elsewhere(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    attempt = tmp_path / "attempt.json"
    attempt.write_text(json.dumps({"tasks": [{"rank": 0, "local_rank": 0, "host": "node1",
                                              "argv": [sys.executable, "-c", "pass"], "env": {}}]}))
    env = {"PATH": "/usr/bin:/bin", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURMD_NODENAME": "node2"}
    res = subprocess.run([sys.executable, "-S", str(root / "cluster" / "slurm_task.py"), "run", str(attempt)],
                         env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "Slurm placed it on node2" in res.stderr and "rank 0 on node1" in res.stderr
