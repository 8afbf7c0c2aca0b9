"""cluster/ssh.py against real sshd servers on loopback addresses: commands, copies, remote process
groups, and what happens when the channel or the whole connection goes away."""
import json
import os
import sys
import time
from pathlib import Path

import pytest

from cluster import ssh
from sshd import sshd_cluster  # noqa: F401 - the fixture
from helpers import alive, wait_for

pytestmark = pytest.mark.ssh

# A remote "rank" that starts a helper in its own process group, reports both pids, then prints forever.
FAMILY = (
    "import subprocess, sys, time\n"
    "helper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
    "print('pids', __import__('os').getpid(), helper.pid, flush=True)\n"
    "i = 0\n"
    "while True:\n"
    "    print('tick', i, flush=True); i += 1; time.sleep(0.05)\n"
)


def wait_gone(pids, timeout=5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.02)
    return False


def start_family(conn, host, lines):
    cmd = ssh.wrapped_command(host.python, [host.python, "-c", FAMILY], {}, host.workdir, grace=2)
    proc = ssh.RemoteProcess(conn, cmd, lines.append, label=host.name)
    wait_for(lambda: proc.remote_pid, timeout=10, what="the remote pid")
    wait_for(lambda: any(l.startswith("pids ") for l in lines), timeout=10, what="the family's pids")
    pids = [int(x) for x in next(l for l in lines if l.startswith("pids ")).split()[1:]]
    assert pids[0] == proc.remote_pid
    return proc, pids


def test_run_in_parallel_and_copy_atomically(sshd_cluster, tmp_path):
    cluster = sshd_cluster(2)
    hosts = cluster.host_specs()
    conns = [ssh.connect(h) for h in hosts]
    results = ssh.run_parallel(list(zip(conns, hosts)),
                               lambda ch: ssh.run(ch[0], "echo $SSH_CONNECTION; exit 3", host=ch[1].name))
    assert [r.exited for r in results] == [3, 3]
    # each "host" really is a separate sshd: the server side of the connection is its own address
    assert [r.stdout.split()[2] for r in results] == ["127.0.0.2", "127.0.0.3"]
    assert results[0].reason().startswith("exit 3: ") and "127.0.0.2" in results[0].reason()
    target = tmp_path / "dir with 'quotes' and spaces" / "rank_table.json"
    ssh.put_bytes(conns[1], str(target), b'{"ok": 1}', host="host1")
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in target.parent.iterdir()] == ["rank_table.json"]   # no temp file left
    for c in conns:
        c.close()


def test_argv_and_env_reach_the_remote_program_verbatim(sshd_cluster, tmp_path):
    cluster = sshd_cluster(1)
    host = cluster.host_specs()[0]
    canary = tmp_path / "injected"
    nasty = ["a b", "it's", '"double"', f"$(touch {canary})", f"; touch {canary}", "`id`", "*", "\\n", ""]
    out = tmp_path / "argv.json"
    script = ("import json, os, sys\n"
              f"open({str(out)!r}, 'w').write(json.dumps([sys.argv[1:], os.environ['NASTY']]))\n")
    cmd = ssh.wrapped_command(host.python, [host.python, "-c", script, *nasty], {"NASTY": nasty[3] + nasty[1]},
                              cwd=host.workdir)
    lines = []
    proc = ssh.RemoteProcess(ssh.connect(host), cmd, lines.append, label=host.name)
    assert proc.wait(20) == 0, lines
    args, env_value = json.loads(out.read_text())
    assert args == nasty
    assert env_value == nasty[3] + nasty[1]
    assert not canary.exists()


def test_terminate_reaches_the_whole_remote_group(sshd_cluster):
    cluster = sshd_cluster(1)
    host = cluster.host_specs()[0]
    lines = []
    proc, pids = start_family(ssh.connect(host), host, lines)
    assert all(alive(p) for p in pids)
    proc.terminate()
    assert proc.wait(10) == -15
    assert proc.reason == "killed by SIGTERM"
    assert wait_gone(pids), "the rank's helper outlived it"
    assert any(l.startswith("tick") for l in lines)
    assert fd_readable(proc.wait_fd())
    proc.close()


def fd_readable(fd: int) -> bool:
    import select
    return bool(select.select([fd], [], [], 1.0)[0])


def test_closed_channel_tears_the_remote_group_down(sshd_cluster):
    """The launcher going away (its channel closes) must not leave ranks running."""
    cluster = sshd_cluster(1)
    host = cluster.host_specs()[0]
    proc, pids = start_family(ssh.connect(host), host, [])
    proc.close_channel()
    assert wait_gone(pids)


def test_lost_connection_is_a_failure_and_the_remote_side_dies(sshd_cluster):
    cluster = sshd_cluster(2)
    specs = cluster.host_specs()
    a = start_family(ssh.connect(specs[0]), specs[0], [])
    b_lines = []
    b = start_family(ssh.connect(specs[1]), specs[1], b_lines)
    assert cluster.hosts[1].drop_connections() >= 1
    assert b[0].wait(10) == ssh.EXIT_SSH_LOST
    assert "SSH connection to host1 lost" in b[0].reason
    assert wait_gone(b[1]), "ranks on a host whose connection dropped kept running"
    assert a[0].poll() is None   # the other host is untouched (the launcher decides what to do)
    a[0].kill()
    assert a[0].wait(10) == -9
    assert wait_gone(a[1])


def test_a_command_that_cannot_start_says_why(sshd_cluster):
    cluster = sshd_cluster(1)
    host = cluster.host_specs()[0]
    proc = ssh.RemoteProcess(ssh.connect(host), ssh.wrapped_command("/no/such/python", ["x"]), lambda s: None,
                             label="host0")
    assert proc.wait(10) == 127
    assert "/no/such/python" in proc.reason and proc.remote_pid is None


def test_ssh_failures_are_results_not_exceptions(sshd_cluster, tmp_path):
    from cluster.hosts import HostSpec
    from sshd import free_port
    cluster = sshd_cluster(1)
    good = cluster.host_specs()[0]
    refused = HostSpec(address="127.0.0.9", port=free_port("127.0.0.9"), identity_file=good.identity_file)
    r = ssh.run(ssh.connect(refused), "true", host="down")
    assert r.exited is None and not r.ok and "connection refused" in r.error
    wrong_key = tmp_path / "other"
    os.system(f"ssh-keygen -q -t ed25519 -N '' -f '{wrong_key}'")
    denied = HostSpec(address=good.address, port=good.port, user=good.user, identity_file=str(wrong_key))
    r = ssh.run(ssh.connect(denied), "true", host="denied")
    assert "authentication failed" in r.error


def test_wrapper_runs_locally_too(tmp_path):
    """The wrapper is plain Python: its exit report and status follow the child's."""
    import subprocess
    out = subprocess.run([sys.executable, "-m", "cluster.ssh", "wrap", "--", sys.executable, "-c",
                          "import sys; print('hello'); sys.exit(7)"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent, timeout=60)
    assert out.returncode == 7
    lines = out.stdout.splitlines()
    assert lines[0].startswith(ssh.WRAP_MARKER) and "hello" in lines and lines[-1] == ssh.WRAP_MARKER + '{"exit": 7}'


def test_wrapper_pins_the_rank_to_the_cores_this_host_has():
    import subprocess
    cmd = [sys.executable, "-m", "cluster.ssh", "wrap", "--affinity", "0,4096", "--", sys.executable, "-c",
           "import os; print(sorted(os.sched_getaffinity(0)))"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent, timeout=60)
    assert out.returncode == 0
    assert "[0]" in out.stdout.splitlines()   # core 4096 does not exist here and is dropped
