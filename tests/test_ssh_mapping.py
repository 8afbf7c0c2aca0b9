"""What a remote rank is told, computed without SSH: paths mapped to the host's job dir, python mapped
to the host's interpreter, the scheduler on the first host, the copied config, and the shell line."""
import shlex
import sys

from cluster.hosts import HostSpec
from orchestrator.multihost import CONFIG_COPY, HostSession, RemoteLauncher
from orchestrator.workers import WorkerSpec

HOSTS = [HostSpec(address="10.0.0.1", name="node0", python="/opt/venv/bin/python", workdir="/opt/pspnet",
                  job_root="/data/runs", env={"HOST_ONLY": "1"}),
         HostSpec(address="10.0.0.2", name="node1", python="/usr/local/bin/python3.11")]
LOCAL_JOB = "/home/me/runs/job-7"


def launcher(**kw):
    session = HostSession(HOSTS, "job-7", LOCAL_JOB)
    return RemoteLauncher(session, grace=4, config={"epochs": 2, "crop_size": 65}, explicit_sched_port=True, **kw)


def spec(rank, host, **env):
    base = {"RANK_ID": str(rank), "PSPNET_JOB_DIR": LOCAL_JOB, "RANK_TABLE_FILE": LOCAL_JOB + "/rank_table.json",
            "PSPNET_RESUME": "/elsewhere/x.ckpt", "MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": "40000"}
    base.update(env)
    return WorkerSpec(rank=rank, local_rank=0, device=0, host=host, env=base,
                      argv=(sys.executable, "-m", "trainer.train", "--config", "/home/me/my.yaml", "epochs=2",
                            "--out", LOCAL_JOB + "/report"))


def test_paths_python_config_and_scheduler_are_mapped_per_host():
    L = launcher()
    for s, host, root in ((spec(0, "node0"), HOSTS[0], "/data/runs/job-7"),
                          (spec(1, "node1"), HOSTS[1], "runs/job-7")):
        env = L.remote_env(s, host)
        assert env["PSPNET_JOB_DIR"] == root
        assert env["RANK_TABLE_FILE"] == root + "/rank_table.json"
        assert env["PSPNET_RESUME"] == "/elsewhere/x.ckpt"          # not under the local job dir: kept
        assert env["MS_SCHED_HOST"] == "10.0.0.1" and env["MS_SCHED_PORT"] == "40000"
        assert env["PYTHONUNBUFFERED"] == "1"
        argv = L.remote_argv(s, host)
        assert argv[0] == host.python
        assert argv[argv.index("--config") + 1] == f"{root}/{CONFIG_COPY}"
        assert argv[-1] == root + "/report" and "epochs=2" in argv
    assert launcher().remote_env(spec(0, "node0"), HOSTS[0])["HOST_ONLY"] == "1"
    assert "HOST_ONLY" not in launcher().remote_env(spec(1, "node1"), HOSTS[1])


def test_a_reachable_scheduler_address_is_kept():
    env = launcher().remote_env(spec(1, "node1", MS_SCHED_HOST="192.168.7.7"), HOSTS[1])
    assert env["MS_SCHED_HOST"] == "192.168.7.7"


def test_the_shell_line_runs_the_wrapper_in_the_workdir():
    L = launcher()
    s = spec(0, "node0")
    line = L.command_for(s)
    assert line.startswith("cd /opt/pspnet && exec env ")
    words = shlex.split(line.split(" && ", 1)[1])
    i = words.index("--")
    assert words[i - 8:i] == ["/opt/venv/bin/python", "-u", "-m", "cluster.ssh", "wrap", "--grace", "4",
                              "--watch-stdin"]
    assert words[i + 1:] == L.remote_argv(s, HOSTS[0])
    assert "PSPNET_JOB_DIR=/data/runs/job-7" in words


def test_map_text_only_maps_the_job_dir_itself():
    session = HostSession(HOSTS, "job-7", LOCAL_JOB)
    assert session.map_text(HOSTS[0], LOCAL_JOB) == "/data/runs/job-7"
    assert session.map_text(HOSTS[0], LOCAL_JOB + "/ckpt/rank_0/a.ckpt") == "/data/runs/job-7/ckpt/rank_0/a.ckpt"
    assert session.map_text(HOSTS[0], LOCAL_JOB + "-other/x") == LOCAL_JOB + "-other/x"
    assert session.map_text(HOSTS[0], "epochs=2") == "epochs=2"
