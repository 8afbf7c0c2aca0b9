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
