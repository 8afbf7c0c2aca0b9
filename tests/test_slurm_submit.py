"""`pspnet-cluster submit` against a real Slurm: the batch script it writes, and sbatch's refusals named
with Slurm's own message, exit code 2 and nothing queued or left behind."""
import subprocess
import sys
from pathlib import Path

import pytest

from tests.slurm import slurm_cluster  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parent.parent


def _cli(args, cwd, env):
    env = dict(env)
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=str(cwd), env=env,
                          capture_output=True, text=True, timeout=60)


def test_no_submit_writes_a_readable_runnable_script(tmp_path):
    res = _cli(["submit", "--nodes", "2", "--devices", "0-3", "--time", "4:00:00", "--partition", "p1",
                "--requeue", "--job-id", "j1", "--no-submit", "--max-restarts", "2", "--", "epochs=3"],
               tmp_path, {"PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    script = (tmp_path / "runs" / "j1" / "job.sbatch").read_text()
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --time=4:00:00",
                 "#SBATCH --partition=p1", "#SBATCH --requeue", "#SBATCH --signal=B:USR1@120",
                 "#SBATCH --job-name=pspnet-j1"):
        assert line in script.splitlines()
    assert "launch --launcher slurm" in script and "--max-restarts 2 -- epochs=3" in script
    assert subprocess.run(["bash", "-n", str(tmp_path / "runs" / "j1" / "job.sbatch")]).returncode == 0


@pytest.mark.slurm
@pytest.mark.parametrize("args, said", [
    (["--partition", "nope"], "sbatch refused the job: sbatch: error: invalid partition specified: nope"),
    (["--time", "5:00:00"], "sbatch refused the job: sbatch: error: Batch job submission failed: Requested time "
                            "limit is invalid"),
])
def test_sbatch_refusal_is_a_clear_error_with_slurms_message(slurm_cluster, tmp_path, args, said):
    argv = ["submit", "--nodes", "2", "--devices", "1", "--time", "0:10:00", "--job-id", "bad", *args]
    res = _cli(argv, tmp_path, slurm_cluster.env())
    assert res.returncode == 2
    assert said in res.stderr
    assert not (tmp_path / "runs" / "bad").exists()
    assert "pspnet-bad" not in slurm_cluster.run(["squeue", "-h", "-o", "%j"]).stdout


def test_bad_time_is_refused_before_sbatch(tmp_path):
    res = _cli(["submit", "--nodes", "1", "--devices", "1", "--time", "soon", "--no-submit"], tmp_path,
               {"PATH": "/usr/bin:/bin"})
    assert res.returncode == 2 and "--time soon: not a Slurm time" in res.stderr
