"""cluster/proc.py with real processes: groups, parent-death, block-wise output, ports, tagged processes."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster import proc
from orchestrator.workers import LocalLauncher, WorkerSpec

ROOT = Path(__file__).resolve().parent.parent


def _wait(cond, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


def _gone(pid):
    return not proc._alive(pid)


def test_splitter_joins_blocks_strips_cr_and_flushes_the_last_line():
    s = proc.LineSplitter(max_line=100)
    assert s.feed(b"ab") == []
    assert s.feed(b"c\r\nde\nf") == ["abc", "de"]
    assert s.feed(b"") == []
    assert s.flush() == ["f"]
    assert s.flush() == []
    assert proc.LineSplitter().feed("é\n".encode() + b"\xff\n") == ["é", "\ufffd"]


def test_splitter_cuts_a_long_line_and_holds_at_most_the_cap():
    s = proc.LineSplitter(max_line=10)
    out = []
    for _ in range(1000):                       # one 100 kB line arriving in pieces
        out += s.feed(b"x" * 100)
        assert len(s._buf) <= 10
    out += s.feed(b"tail\nnext\n")
    assert len(out) == 2
    assert out[0].startswith("x" * 10) and "99994 more bytes dropped" in out[0]
    assert out[1] == "next"


def test_a_20_mb_line_reaches_the_sink_cut_and_the_next_line_whole(tmp_path):
    lines = []

    class Sink:
        def line(self, text):
            lines.append(text)

        def close(self):
            pass

    code = "import sys; sys.stdout.write('y' * 20_000_000 + '\\nafter\\n'); sys.stdout.flush()"
    spec = WorkerSpec(rank=0, local_rank=0, device=None, argv=(sys.executable, "-c", code))
    w = LocalLauncher().start(spec, Sink())
    assert w.wait(30) == 0
    w.join_output(30)
    w.close()
    assert len(lines) == 2
    assert len(lines[0]) < proc.MAX_LINE + 200 and "line cut by pspnet-cluster" in lines[0]
    assert lines[1] == "after"


def test_pump_reads_in_blocks_not_bytes():
    r, w = os.pipe()
    os.write(w, b"".join(b"line %d\n" % i for i in range(2000)))
    os.close(w)
    reads = []
    real_read = os.read

    def counting_read(fd, n):
        reads.append(n)
        return real_read(fd, n)

    got = []
    os.read = counting_read
    try:
        proc.pump_lines(r, got.append)
    finally:
        os.read = real_read
        os.close(r)
    assert got[0] == "line 0" and got[-1] == "line 1999" and len(got) == 2000
    assert len(reads) <= 3 and all(n == proc.BLOCK for n in reads)


def test_spawned_child_leads_its_group_and_dies_with_its_parent(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    # a parent that spawns a child through proc.spawn and then waits forever
    code = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r}); from cluster import proc; "
            f"p = proc.spawn(['sleep', '60'], stdout=None); open({str(pid_file)!r}, 'w').write(str(p.pid)); "
            "time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        assert _wait(lambda: pid_file.exists() and pid_file.read_text())
        child = int(pid_file.read_text())
        assert os.getpgid(child) == child and os.getsid(child) == child
        parent.kill()
        parent.wait(5)
        assert _wait(lambda: _gone(child), 5), "PDEATHSIG did not end the child of a SIGKILLed parent"
    finally:
        parent.kill()
        parent.wait(5)


def test_signal_group_reaches_helpers_and_refuses_dangerous_targets():
    p = proc.spawn(["sh", "-c", "sleep 60 & sleep 60 & wait"], stdout=subprocess.DEVNULL)
    try:
        assert _wait(lambda: len(_group_members(p.pid)) >= 3, 5)
        members = _group_members(p.pid)
        assert proc.signal_group(p.pid, signal.SIGKILL)
        p.wait(5)
        assert _wait(lambda: all(_gone(m) for m in members), 5)
        assert not proc.signal_group(0, signal.SIGKILL) and not proc.signal_group(1, signal.SIGKILL)
    finally:
        proc.signal_group(p.pid, signal.SIGKILL)


def _group_members(pgid):
    out = []
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                if os.getpgid(int(e)) == pgid and not _gone(int(e)):
                    out.append(int(e))
            except OSError:
                pass
    return out


def test_describe_exit_words():
    assert proc.describe_exit(3) == "exited with code 3"
    assert proc.describe_exit(-9) == "killed by SIGKILL"
    assert proc.describe_exit(None) == "still running"
    assert proc.signal_name(0) is None and proc.signal_name(-15) == "SIGTERM"


def test_ports():
    port = proc.free_port("127.0.0.1")
    assert proc.port_is_free(port, "127.0.0.1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen(1)
        assert not proc.port_is_free(port, "127.0.0.1")


def test_tagged_processes_finds_only_the_tagged_ones_and_ends_them():
    tag = {"PSPNET_JOB_ID": f"tag-test-{os.getpid()}", "PSPNET_JOB_DIR": "/nowhere"}
    env = dict(os.environ, **tag)
    # a double fork with setsid: out of every group we know, only the environment says whose it is
    p = subprocess.Popen(["sh", "-c", "setsid sleep 60 & sleep 60"], env=env)
    other = subprocess.Popen(["sleep", "60"], env=dict(env, PSPNET_JOB_ID="someone-else"))
    try:
        assert _wait(lambda: len(proc.tagged_processes(tag)) >= 3, 5)
        found = proc.tagged_processes(tag)
        assert other.pid not in found and p.pid in found
        proc.end_processes(found, grace=0.5)
        assert _wait(lambda: proc.tagged_processes(tag) == [], 5)
        assert other.poll() is None
    finally:
        for q in (p, other):
            q.kill()
            q.wait(5)
