"""The test Slurm itself: two nodes on this machine that really run job steps."""
import pytest

from tests.slurm import slurm_cluster  # noqa: F401  (fixture)

pytestmark = pytest.mark.slurm


def test_two_nodes_run_a_step(slurm_cluster):
    res = slurm_cluster.run(["srun", "-N2", "-n2", "--label", "sh", "-c", 'echo "$SLURMD_NODENAME $SLURM_PROCID"'])
    assert res.returncode == 0, res.stderr
    lines = sorted(l.split(":", 1)[1].strip() for l in res.stdout.splitlines())
    assert lines == ["node1 0", "node2 1"]
