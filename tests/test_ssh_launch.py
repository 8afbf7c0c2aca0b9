"""`pspnet-cluster launch --hosts` end to end over real SSH (loopback "hosts"), with the test fake worker
standing in for the trainer: completion, teardown everywhere on a failure anywhere, lost connections,
preflight failures that start nothing, paths with spaces and quotes, restarts from per-host checkpoints."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sshd import sshd_cluster  # noqa: F401 - the fixture
from helpers import alive, events, job_json, wait_for

pytestmark = pytest.mark.ssh

ROOT = Path(__file__).resolve().parent.parent
FAKE = ROOT / "tests" / "workers" / "fake_worker.py"


def launch_argv(hostfile, job_dir, worker_args, *extra):
    return [sys.executable, "-m", "orchestrator.cli", "launch", "--hosts", str(hostfile), "--devices", "1",
            "--job-dir", str(job_dir), "--grace", "3", "--quiet", *extra,
            "--cmd", f"python {FAKE} {worker_args}"]


def run_launch(argv, cwd, timeout=120):
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def rank_pids(job_dir, world):
    """The remote pid of every rank, from its `start` event (the remote hosts are this machine)."""
    pids = {}
    for r in range(world):
        starts = [e for e in events(job_dir, r) if e["event"] == "start"]
        if starts:
            pids[r] = starts[-1]["pid"]
    return pids if len(pids) == world else None


def test_two_hosts_run_to_completion_with_host_labels(sshd_cluster, tmp_path):
    cluster = sshd_cluster(2)
    hostfile = cluster.write_hostfile(tmp_path / "hosts.yaml")
    job = tmp_path / "runs" / "job-ok"
    res = run_launch(launch_argv(hostfile, job, "--steps 3 --ckpt-every 1 --print-env"), tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    for rank, host in ((0, "host0"), (1, "host1")):
        evs = events(job, rank)
        assert [e["event"] for e in evs][-1] == "finished"
        assert {e["host"] for e in evs} == {host}
        log = (job / "logs" / f"rank_{rank}.log").read_text().splitlines()
        env = json.loads(next(l for l in log if l.startswith("ENV "))[4:])
        # the dynamic cluster's scheduler runs on the first host, and every rank is told its address
        assert env["MS_SCHED_HOST"] == "127.0.0.2" and env["MS_WORKER_NUM"] == "2"
        assert env["PSPNET_JOB_DIR"] == str(Path(cluster.job_root(cluster.hosts[rank])) / "job-ok")
        assert "rank %d: done" % rank in (job / "logs" / f"rank_{rank}.log").read_text()
        # checkpoints stay on the rank's host: in that host's job root, not in the local job dir
        remote = Path(cluster.job_root(cluster.hosts[rank])) / "job-ok" / "ckpt" / f"rank_{rank}"
        assert len(list(remote.glob("*.ckpt.json"))) == 3
    assert not (job / "ckpt" / "rank_0").exists() or not list((job / "ckpt" / "rank_0").iterdir())
    assert "fake scheduler" in (job / "logs" / "scheduler.log").read_text()
    data = job_json(job)
    assert data["state"] == "succeeded"
    hosts = json.loads((job / "hosts.json").read_text())
    assert [h["name"] for h in hosts["hosts"]] == ["host0", "host1"]


def test_a_rank_killed_on_host_b_tears_down_host_a(sshd_cluster, tmp_path):
    cluster = sshd_cluster(2)
    hostfile = cluster.write_hostfile(tmp_path / "hosts.yaml")
    job = tmp_path / "runs" / "job-kill"
    proc = subprocess.Popen(launch_argv(hostfile, job, "--steps 100000 --step-time 0.05"), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        pids = wait_for(lambda: rank_pids(job, 2), what="both ranks started")
        wait_for(lambda: all(any(e["event"] == "step" for e in events(job, r)) for r in (0, 1)), what="steps")
        os.kill(pids[1], signal.SIGKILL)               # rank 1 lives on host1
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out
    assert not alive(pids[0]), "rank 0 on host0 survived the failure of rank 1 on host1"
    attempt = job_json(job)["attempts"][-1]
    assert attempt["failure"]["rank"] == 1 and attempt["failure"]["signal"] == "SIGKILL"
    assert attempt["ranks"]["0"]["exit_code"] in (-15, -9)
    assert "rank 1 killed by SIGKILL" in out


def test_a_lost_ssh_connection_is_a_rank_failure(sshd_cluster, tmp_path):
    cluster = sshd_cluster(2)
    hostfile = cluster.write_hostfile(tmp_path / "hosts.yaml")
    job = tmp_path / "runs" / "job-lost"
    proc = subprocess.Popen(launch_argv(hostfile, job, "--steps 100000 --step-time 0.05"), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        pids = wait_for(lambda: rank_pids(job, 2), what="both ranks started")
        wait_for(lambda: all(any(e["event"] == "step" for e in events(job, r)) for r in (0, 1)), what="steps")
        assert cluster.hosts[1].drop_connections() >= 1
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, out
    failure = job_json(job)["attempts"][-1]["failure"]
    assert failure["rank"] == 1 and failure["exit_code"] == 255
    assert any("SSH connection to host1 lost" in l for l in failure["last_lines"])
    assert not alive(pids[0]) and not alive(pids[1])


def test_ctrl_c_reaches_every_host(sshd_cluster, tmp_path):
    cluster = sshd_cluster(2)
    hostfile = cluster.write_hostfile(tmp_path / "hosts.yaml")
    job = tmp_path / "runs" / "job-int"
    proc = subprocess.Popen(launch_argv(hostfile, job, "--steps 100000 --step-time 0.05"), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        pids = wait_for(lambda: rank_pids(job, 2), what="both ranks started")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    assert not any(alive(p) for p in pids.values())
    assert job_json(job)["state"] == "stopped"


def test_ranks_die_with_a_killed_launcher(sshd_cluster, tmp_path):
    """kill -9 of the launcher: its SSH connections close, and every host's wrapper takes its rank down."""
    cluster = sshd_cluster(2)
    hostfile = cluster.write_hostfile(tmp_path / "hosts.yaml")
    job = tmp_path / "runs" / "job-orphan"
    proc = subprocess.Popen(launch_argv(hostfile, job, "--steps 100000 --step-time 0.05"), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pids = wait_for(lambda: rank_pids(job, 2), what="both ranks started")
        proc.kill()
        proc.wait(10)
        # the wrappers SIGTERM the rank at once (the fake worker dies of it); 10 s is only a bound
        wait_for(lambda: not any(alive(p) for p in pids.values()), timeout=10, what="remote ranks to die")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_stop_command_reaches_every_host(sshd_cluster, tmp_path):
    cluster = sshd_cluster(2)
    hostfile = cluster.write_hostfile(tmp_path / "hosts.yaml")
    job = tmp_path / "runs" / "job-stop"
    # no end-of-job report: a loaded machine takes longer to draw it than `stop` waits for the launcher
    proc = subprocess.Popen(launch_argv(hostfile, job, "--steps 100000 --step-time 0.05", "--no-report"), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        pids = wait_for(lambda: rank_pids(job, 2), what="both ranks started")
        stop = run_launch([sys.executable, "-m", "orchestrator.cli", "stop", str(job)], tmp_path)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    assert not any(alive(p) for p in pids.values())
    assert job_json(job)["state"] == "stopped"


def test_an_unreachable_host_fails_preflight_and_nothing_starts(sshd_cluster, tmp_path):
    from sshd import free_port
    cluster = sshd_cluster(1)
    text = cluster.hostfile_text()
    dead_port = free_port("127.0.0.9")
    text += f"  - name: deadhost\n    address: 127.0.0.9\n    port: {dead_port}\n"
    hostfile = tmp_path / "hosts.yaml"
    hostfile.write_text(text)
    job = tmp_path / "runs" / "job-pre"
    marker = tmp_path / "started"
    res = run_launch(launch_argv(hostfile, job, f"--pid-file-dir {marker}"), tmp_path)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [l.strip() for l in res.stderr.splitlines()]
    assert any(l.startswith("deadhost: cannot connect to") and f"127.0.0.9:{dead_port}" in l
               and "connection refused" in l for l in lines), res.stderr
    assert not any(l.startswith("host0:") for l in lines)      # the healthy host is not blamed
    assert "nothing was started" in res.stderr
    assert not (job / "job.json").exists()
    assert not (Path(cluster.job_root(cluster.hosts[0])) / "job-pre").exists()   # nothing made on host0


def test_preflight_names_each_failing_host_once(sshd_cluster, tmp_path):
    cluster = sshd_cluster(3)
    text = cluster.hostfile_text()
    # host1: a python that does not exist; host2: an interpreter without the project on its path
    text = text.replace("  - name: host1\n", "  - name: host1\n    python: /opt/none/bin/python\n")
    bare = getattr(sys, "_base_executable", None) or sys.executable   # the interpreter under the venv
    text = text.replace("  - name: host2\n", f"  - name: host2\n    python: {bare}\n    workdir: /\n")
    hostfile = tmp_path / "hosts.yaml"
    hostfile.write_text(text)
    res = run_launch(launch_argv(hostfile, tmp_path / "j", "") + ["--dry-run"], tmp_path)
    assert res.returncode == 2
    lines = [l.strip() for l in res.stderr.splitlines() if l.strip().startswith("host")]
    assert len(lines) == 2, res.stderr
    assert lines[0].startswith("host1: python not found: /opt/none/bin/python")
    assert lines[1].startswith(f"host2: the project is not importable by {bare}")


def test_paths_with_spaces_and_quotes_survive(sshd_cluster, tmp_path):
    """Job dir, host job roots, script path and program arguments with spaces, quotes and shell syntax."""
    cluster = sshd_cluster(2)
    odd = tmp_path / "it's a \"quoted\" dir; $(x)"
    odd.mkdir()
    text = cluster.hostfile_text()
    for h in cluster.hosts:
        text = text.replace(f"job_root: {cluster.job_root(h)}",
                            f"job_root: {json.dumps(str(odd / ('root of ' + h.name)))}")
    hostfile = odd / "hosts file.yaml"
    hostfile.write_text(text)
    canary = tmp_path / "pwned"
    script = odd / "echo args.py"
    script.write_text(
        "import json, os, sys\n"
        "from pathlib import Path\n"
        "if os.environ.get('MS_ROLE') == 'MS_SCHED':\n    sys.exit(0)\n"
        "d = Path(os.environ['PSPNET_JOB_DIR'])\n"
        "d.mkdir(parents=True, exist_ok=True)\n"
        "(d / f\"argv_{os.environ['RANK_ID']}.json\").write_text(json.dumps(sys.argv[1:]))\n")
    job = odd / "runs" / "job-odd"
    args = ["a b", "it's", '"dq"', f"$(touch {canary})", f"; touch {canary}"]
    import shlex
    argv = [sys.executable, "-m", "orchestrator.cli", "launch", "--hosts", str(hostfile), "--devices", "1",
            "--job-dir", str(job), "--quiet", "--cmd", shlex.join(["python", str(script)]), "--", *args]
    res = run_launch(argv, tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    for r, h in enumerate(cluster.hosts):
        written = odd / f"root of {h.name}" / "job-odd" / f"argv_{r}.json"
        assert json.loads(written.read_text()) == args
    assert not canary.exists()


def test_restart_resumes_from_the_newest_step_every_host_holds(sshd_cluster, tmp_path):
    cluster = sshd_cluster(2)
    hostfile = cluster.write_hostfile(tmp_path / "hosts.yaml")
    job = tmp_path / "runs" / "job-restart"
    res = run_launch(launch_argv(hostfile, job, "--steps 36 --step-time 0.1 --ckpt-every 1 --crash-at 30 --bad-rank 1",
                                 "--max-restarts", "1"), tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    data = job_json(job)
    assert len(data["attempts"]) == 2
    resume = data["attempts"][1]["resume"]
    assert resume is not None, res.stdout
    # what each rank had checkpointed when attempt 0 ended (rank 1 died before step 30: 29 at most;
    # rank 0, started on another host at another moment, was somewhere else when the group went down)
    held = {r: max(e["global_step"] for e in events(job, r) if e["event"] == "checkpoint" and e["attempt"] == 0)
            for r in (0, 1)}
    assert held[1] == 29
    assert resume["global_step"] == min(held.values())
    for r, h in enumerate(cluster.hosts):
        assert resume["paths"][str(r)].startswith(cluster.job_root(h) + "/job-restart/ckpt/rank_%d/" % r)
        resumed = [e for e in events(job, r) if e["event"] == "resumed"]
        assert resumed and resumed[-1]["global_step"] == resume["global_step"] and resumed[-1]["attempt"] == 1
        assert [e["event"] for e in events(job, r)][-1] == "finished"


def test_ascend_discovery_over_ssh_gives_one_merged_rank_table_on_every_host(sshd_cluster, tmp_path, fixtures_dir):
    """Each host reports its own hccn.conf / npu-smi table; ranks are numbered by server, then device;
    the merged table is copied to every host and RANK_TABLE_FILE points at that copy."""
    cluster = sshd_cluster(2)
    text = cluster.hostfile_text(devices="2")
    conf = fixtures_dir.joinpath("hccn.conf").read_text()
    for i, h in enumerate(cluster.hosts):
        own = tmp_path / f"hccn_{h.name}.conf"
        own.write_text(conf.replace("192.168.", f"10.{i}."))       # each server its own device IPs
        text = text.replace(f"  - name: {h.name}\n", f"  - name: {h.name}\n    hccn_conf: {own}\n"
                            f"    npu_smi: {fixtures_dir / 'npu-smi-910b4-2dev.txt'}\n")
    hostfile = tmp_path / "hosts.yaml"
    hostfile.write_text(text)
    job = tmp_path / "runs" / "job-rt"
    res = run_launch([sys.executable, "-m", "orchestrator.cli", "launch", "--hosts", str(hostfile), "--devices", "2",
                      "--backend", "ascend", "--job-dir", str(job), "--quiet", "--no-bind-cores",
                      "--cmd", f"python {FAKE} --steps 1 --print-env"], tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    table = json.loads((job / "rank_table.json").read_text())
    assert [s["server_id"] for s in table["server_list"]] == ["127.0.0.2", "127.0.0.3"]
    assert [(d["rank_id"], d["device_id"], d["device_ip"]) for s in table["server_list"] for d in s["device"]] == [
        ("0", "0", "10.0.100.101"), ("1", "1", "10.0.101.101"), ("2", "0", "10.1.100.101"), ("3", "1", "10.1.101.101")]
    for rank in range(4):
        host = cluster.hosts[rank // 2]
        env_line = next(l for l in (job / "logs" / f"rank_{rank}.log").read_text().splitlines() if l.startswith("ENV "))
        env = json.loads(env_line[4:])
        copy = Path(cluster.job_root(host)) / "job-rt" / "rank_table.json"
        assert env["RANK_TABLE_FILE"] == str(copy)
        assert json.loads(copy.read_text()) == table
        assert (env["RANK_ID"], env["DEVICE_ID"], env["PSPNET_HOST"]) == (str(rank), str(rank % 2), host.name)
        assert "MS_SCHED_HOST" not in env


def test_many_ranks_on_one_host_fit_under_sshd_max_sessions(sshd_cluster, tmp_path):
    """sshd allows few channels per connection (MaxSessions); 7 ranks + the scheduler on one host with
    MaxSessions 4 still start: the launcher spreads them over several connections."""
    cluster = sshd_cluster(1, max_sessions=4)
    hostfile = cluster.write_hostfile(tmp_path / "hosts.yaml", devices="7")
    job = tmp_path / "runs" / "job-many"
    res = run_launch([sys.executable, "-m", "orchestrator.cli", "launch", "--hosts", str(hostfile), "--devices", "7",
                      "--job-dir", str(job), "--quiet", "--cmd", f"python {FAKE} --steps 2"], tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    for r in range(7):
        assert [e["event"] for e in events(job, r)][-1] == "finished"


def test_resume_asks_every_host_for_its_checkpoints(sshd_cluster, tmp_path):
    """`pspnet-cluster resume` of a failed multi-host job: preflight again, then each rank continues from
    its own host's file of the newest step every rank holds."""
    cluster = sshd_cluster(2)
    hostfile = cluster.write_hostfile(tmp_path / "hosts.yaml")
    job = tmp_path / "runs" / "job-resume"
    first = run_launch(launch_argv(hostfile, job, "--steps 34 --step-time 0.1 --ckpt-every 1 --crash-at 30 "
                                                  "--bad-rank 0"), tmp_path)
    assert first.returncode == 1, first.stdout + first.stderr
    res = run_launch([sys.executable, "-m", "orchestrator.cli", "resume", str(job), "--quiet"], tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    data = job_json(job)
    assert data["state"] == "succeeded" and len(data["attempts"]) == 2
    resume = data["attempts"][1]["resume"]
    held = {r: max(e["global_step"] for e in events(job, r) if e["event"] == "checkpoint" and e["attempt"] == 0)
            for r in (0, 1)}
    assert held[0] == 29 and resume["global_step"] == min(held.values())
    for r, h in enumerate(cluster.hosts):
        assert resume["paths"][str(r)].startswith(cluster.job_root(h) + "/job-resume/ckpt/rank_%d/" % r)
