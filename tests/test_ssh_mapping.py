"""What a remote rank is told, computed without SSH: paths mapped to the host's job dir, python mapped
to the host's interpreter, the scheduler on the first host, the copied config, and the shell line."""
import json
import shlex
import sys

import pytest

from orchestrator.backends.ssh import CONFIG_COPY, SSHBackend
from orchestrator.jobspec import JobSpec
from orchestrator.plan import JobPlan, Placement, attempt_workers

HOSTFILE = """\
hosts:
  - name: node0
    address: 10.0.0.1
    python: /opt/venv/bin/python
    workdir: /opt/pspnet
    job_root: /data/runs
    env: {HOST_ONLY: "1"}
  - name: node1
    address: 10.0.0.2
    python: /usr/local/bin/python3.11
"""
LOCAL_JOB = "/home/me/runs/job-7"


@pytest.fixture
def backend(tmp_path):
    (tmp_path / "hosts.yaml").write_text(HOSTFILE)
    spec = JobSpec(devices="1", hosts=str(tmp_path / "hosts.yaml"), job_id="job-7", job_dir=LOCAL_JOB,
                   cwd=str(tmp_path), sched_port=40000, grace=4, launcher="ssh")
    b = SSHBackend(spec)
    yield b
    b.close()


def plan_for(spec, mode="dynamic"):
    argv = [sys.executable, "-m", "trainer.train", "--config", "/home/me/my.yaml", "epochs=2",
            "--out", LOCAL_JOB + "/report"]
    return JobPlan(spec=spec, backend="cpu", mode=mode, base_argv=argv,
                   placements=[Placement(0, 0, 0, host="node0"), Placement(1, 0, 0, host="node1")])


def test_paths_python_config_and_scheduler_are_mapped_per_host(backend):
    plan = plan_for(backend.spec)
    rendezvous = backend.rendezvous(plan, 0)          # an explicit --sched-port: no SSH needed
    assert rendezvous == ("10.0.0.1", 40000)          # the scheduler runs on the first host
    ws = attempt_workers(plan, 0, rendezvous, resume={1: "/elsewhere/x.ckpt"}, node_view=backend.node_view)
    sched, r0, r1 = ws
    assert sched.host == "node0" and sched.env["MS_ROLE"] == "MS_SCHED"
    for w, python, root in ((r0, "/opt/venv/bin/python", "/data/runs/job-7"),
                            (r1, "/usr/local/bin/python3.11", "runs/job-7")):
        assert w.env["PSPNET_JOB_DIR"] == root
        assert w.env["MS_SCHED_HOST"] == "10.0.0.1" and w.env["MS_SCHED_PORT"] == "40000"
        assert w.argv[0] == python
        assert w.argv[w.argv.index("--config") + 1] == f"{root}/{CONFIG_COPY}"
        assert w.argv[-1] == root + "/report" and "epochs=2" in w.argv
    assert r1.env["PSPNET_RESUME"] == "/elsewhere/x.ckpt"
    assert r0.env["HOST_ONLY"] == "1" and "HOST_ONLY" not in r1.env
    plan.mode = "ranktable"
    r0, r1 = attempt_workers(plan, 0, node_view=backend.node_view)
    assert r0.env["RANK_TABLE_FILE"] == "/data/runs/job-7/rank_table.json"


def test_a_reachable_scheduler_address_is_kept(backend):
    backend.spec.sched_host = "192.168.7.7"
    assert backend.rendezvous(plan_for(backend.spec), 0) == ("192.168.7.7", 40000)


def test_the_shell_line_runs_the_wrapper_in_the_workdir(backend):
    plan = plan_for(backend.spec)
    w = attempt_workers(plan, 0, backend.rendezvous(plan, 0), node_view=backend.node_view)[1]
    line = backend.command_for(w)
    assert line.startswith("cd /opt/pspnet && exec env ")
    words = shlex.split(line.split(" && ", 1)[1])
    i = words.index("--")
    assert words[i - 8:i] == ["/opt/venv/bin/python", "-u", "-m", "cluster.ssh", "wrap", "--grace", "4",
                              "--watch-stdin"]
    assert words[i + 1:] == list(w.argv)
    assert "PSPNET_JOB_DIR=/data/runs/job-7" in words and "PYTHONUNBUFFERED=1" in words


def test_only_the_job_dir_itself_is_mapped(backend):
    spec = backend.spec
    plan = JobPlan(spec=spec, backend="cpu", mode="ranktable", placements=[Placement(0, 0, 0, host="node0")],
                   base_argv=["prog", LOCAL_JOB, LOCAL_JOB + "/ckpt/rank_0/a.ckpt", LOCAL_JOB + "-other/x",
                              "epochs=2"])
    (w,) = attempt_workers(plan, 0, node_view=backend.node_view)
    assert list(w.argv) == ["prog", "/data/runs/job-7", "/data/runs/job-7/ckpt/rank_0/a.ckpt",
                            LOCAL_JOB + "-other/x", "epochs=2"]


def test_ssh_without_hosts_is_bad_input(tmp_path):
    from orchestrator.plan import PlanError
    b = SSHBackend(JobSpec(devices="1", job_dir=str(tmp_path), launcher="ssh"))
    with pytest.raises(PlanError, match="needs --hosts"):
        b.discover()


def test_the_remote_helper_answers_a_free_port_and_ends_only_the_jobs_processes(tmp_path):
    """What each host runs (``python -m orchestrator.backends.ssh ...``), run here as the hosts run it."""
    import os
    import signal
    import subprocess
    import time

    from orchestrator.backends.ssh import HELPER, LEFT_MARK, PORT_MARK
    out = subprocess.run([sys.executable, "-m", HELPER, "free-port"], capture_output=True, text=True, timeout=60)
    port = int(out.stdout.strip()[len(PORT_MARK):])
    from cluster.proc import port_is_free
    assert out.returncode == 0 and 0 < port < 65536 and port_is_free(port, "0.0.0.0")

    def sleeper(job_dir):
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                env={**os.environ, "PSPNET_JOB_ID": "job-7", "PSPNET_JOB_DIR": job_dir})
    ours, other = sleeper("/data/runs/job-7"), sleeper("/data/runs/other")
    try:
        ended = []
        deadline = time.monotonic() + 10
        while not ended and time.monotonic() < deadline:   # its environment is readable once it exec'd
            res = subprocess.run([sys.executable, "-m", HELPER, "leftovers", "--job-id", "job-7", "--job-dir",
                                  "/data/runs/job-7"], capture_output=True, text=True, timeout=60)
            ended = json.loads(res.stdout.strip()[len(LEFT_MARK):])["ended"]
        assert ended == [ours.pid] and ours.wait(10) == -signal.SIGKILL and other.poll() is None
    finally:
        for p in (ours, other):
            p.kill()
            p.wait(10)
