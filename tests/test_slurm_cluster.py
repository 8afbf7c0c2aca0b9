"""The test Slurm itself: two nodes on this machine that really run job steps."""
import pytest

from tests.slurm import slurm_cluster  # noqa: F401  (fixture)

pytestmark = pytest.mark.slurm


def test_two_nodes_run_a_step(slurm_cluster):
    res = slurm_cluster.run(["srun", "-N2", "-n2", "--label", "sh", "-c", 'echo "$SLURMD_NODENAME $SLURM_PROCID"'])
    assert res.returncode == 0, res.stderr
    lines = sorted(l.split(":", 1)[1].strip() for l in res.stdout.splitlines())
    assert lines == ["node1 0", "node2 1"]


def test_python_hostlist_expansion_agrees_with_scontrol(slurm_cluster):
    """The launcher expands SLURM_JOB_NODELIST itself instead of asking scontrol: for the lists Slurm
    writes (here: its own compression of a set of names) both give the same names in the same order."""
    from cluster.slurm import expand_hostlist
    names = ["node1", "node2", "node3", "node5", "n098", "n099", "n100", "gpu01", "gpu02", "a1-ib", "a2-ib", "b",
             "rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]
    for group in (names[:2], names[:4], names[4:9], names[9:12], names[12:], names):
        packed = slurm_cluster.run(["scontrol", "show", "hostlist", ",".join(group)])
        assert packed.returncode == 0 and packed.stdout.strip(), packed.stderr
        text = packed.stdout.strip()
        res = slurm_cluster.run(["scontrol", "show", "hostnames", text])
        assert res.returncode == 0 and res.stdout.split(), res.stderr
        assert expand_hostlist(text) == res.stdout.split(), text
