"""Process control shared by everything that starts or watches processes: the local launcher
(orchestrator/workers.py), the remote wrapper and SSH channels (cluster/ssh.py), preflight and planning.

- ``spawn`` / ``child_setup``: a child in its own session and process group (so one ``killpg`` reaches
  the helpers it starts), with ``PR_SET_PDEATHSIG = SIGKILL`` (Linux: the kernel kills it when its
  parent dies, even by SIGKILL), optionally pinned to CPU cores.
- ``signal_group``: a signal to a whole process group, tolerant of a group that is already gone.
- ``describe_exit`` / ``signal_name``: one wording of an exit code (``subprocess`` convention: ``-S`` is
  "killed by signal S").
- ``LineSplitter`` / ``pump_lines``: output read in 64 KiB blocks and split into lines.  Reading a pipe
  one byte per system call (``readline`` on an unbuffered pipe) makes a chatty process block on its
  pipe; a line longer than ``max_line`` bytes is cut, with a marker saying how much was dropped, so
  memory stays bounded whatever a process prints.
- ``free_port`` / ``port_is_free``: rendezvous and exporter ports.
- ``tagged_processes`` / ``end_processes``: find the processes of one job by the environment tag every
  rank (and everything it starts) inherits, and end them; see docs/orchestrator.md for why the tag is
  how processes that outlive a SIGKILLed launcher are found.
"""
from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence

PR_SET_PDEATHSIG = 1

#: bytes read per system call from a child's output
BLOCK = 64 * 1024
#: longest line kept whole; longer lines are cut (see LineSplitter)
MAX_LINE = 1024 * 1024

_libc = None


def _load_libc():
    """libc for prctl (Linux only); loaded in the parent, since the child between fork and exec
    must not import or allocate much."""
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                _libc = ctypes.CDLL(None, use_errno=True)
            except OSError:
                _libc = False
    return _libc


def child_setup(parent_pid: Optional[int] = None,
                affinity: Optional[Iterable[int]] = None) -> Callable[[], None]:
    """A ``preexec_fn``: die with the parent (PDEATHSIG), pin to the cores of ``affinity`` this machine has.

    Use with ``start_new_session=True`` (``spawn`` does both).
    """
    libc = _load_libc()
    parent = os.getpid() if parent_pid is None else parent_pid
    cores = None
    if affinity:
        try:   # a plan made elsewhere may name cores this host lacks: keep the ones it has
            cores = set(int(c) for c in affinity) & os.sched_getaffinity(0)
        except (AttributeError, OSError):
            cores = None

    def setup() -> None:
        if libc:
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
            if os.getppid() != parent:   # the parent died before prctl took effect
                os._exit(137)
        if cores:
            try:
                os.sched_setaffinity(0, cores)
            except OSError:
                pass
    return setup


def spawn(argv: Sequence[str], *, env: Optional[Mapping[str, str]] = None, cwd: Optional[str] = None,
          stdout=subprocess.PIPE, affinity: Optional[Iterable[int]] = None) -> subprocess.Popen:
    """Start ``argv`` as a supervised child: own session/group, PDEATHSIG, stdout+stderr merged.

    With ``stdout=PIPE`` read the output with ``pump_lines(proc.stdout.fileno(), ...)``.
    Raises what ``subprocess.Popen`` raises (FileNotFoundError, PermissionError, OSError).
    """
    return subprocess.Popen(list(argv), env=None if env is None else dict(env), cwd=cwd,
                            stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT,
                            bufsize=0, close_fds=True, start_new_session=True,
                            preexec_fn=child_setup(os.getpid(), affinity))


def signal_group(pgid: Optional[int], sig: int) -> bool:
    """Send ``sig`` to process group ``pgid``; True if the group existed.

    No fallback to ``kill(pid)``: once the group is empty its number may belong to an unrelated
    process, while a group with members left keeps its number reserved by the kernel.
    """
    if not pgid or pgid <= 1:   # 0 and 1 would mean "our own group" and "init"
        return False
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def signal_name(code: Optional[int]) -> Optional[str]:
    """``SIGKILL`` for exit code -9; None for a normal exit or no code."""
    if code is None or code >= 0:
        return None
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def describe_exit(code: Optional[int]) -> str:
    """"exited with code 3", "killed by SIGKILL", "still running"."""
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by {signal_name(code)}"
    return f"exited with code {code}"


# ---------------------------------------------------------------- output

class LineSplitter:
    """Bytes in, complete lines out (``str``, no newline, trailing ``\\r`` removed).

    A line longer than ``max_line`` bytes keeps its first ``max_line`` bytes and ends with a marker;
    the rest of it is counted and dropped as it arrives, so at most ``max_line`` bytes are held.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = int(max_line)
        self._buf = bytearray()
        self._dropped = 0          # bytes of the current line thrown away so far

    def _finish(self, raw: bytes) -> str:
        text = bytes(raw).rstrip(b"\r").decode("utf-8", errors="replace")
        if self._dropped:
            text += f" [... line cut by pspnet-cluster: {self._dropped} more bytes dropped]"
            self._dropped = 0
        return text

    def feed(self, data: bytes) -> List[str]:
        out: List[str] = []
        start = 0
        n = len(data)
        while start < n:
            nl = data.find(b"\n", start)
            end = n if nl < 0 else nl
            room = self.max_line - len(self._buf)
            take = min(room, end - start) if room > 0 else 0
            if take:
                self._buf += data[start:start + take]
            self._dropped += (end - start) - take
            if nl < 0:
                break
            out.append(self._finish(self._buf))
            self._buf = bytearray()
            start = nl + 1
        return out

    def flush(self) -> List[str]:
        """The last line when the stream ended without a newline."""
        if not self._buf and not self._dropped:
            return []
        line = self._finish(self._buf)
        self._buf = bytearray()
        return [line]


def pump_lines(fd: int, on_line: Callable[[str], None], *, max_line: int = MAX_LINE,
               block: int = BLOCK) -> None:
    """Read ``fd`` to its end in blocks and call ``on_line`` for every line (see ``LineSplitter``).

    A read error ends the stream like EOF; errors of ``on_line`` propagate (the caller decides).
    """
    splitter = LineSplitter(max_line)
    while True:
        try:
            data = os.read(fd, block)
        except InterruptedError:
            continue
        except OSError:
            break
        if not data:
            break
        for line in splitter.feed(data):
            on_line(line)
    for line in splitter.flush():
        on_line(line)


# ---------------------------------------------------------------- ports

def port_is_free(port: int, host: str = "0.0.0.0") -> bool:
    """Whether a TCP listener could bind ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, int(port)))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- finding a job's processes

def _environ(pid: int) -> Dict[str, str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            raw = fh.read()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return env


def tagged_processes(tag: Mapping[str, str], exclude: Iterable[int] = ()) -> List[int]:
    """Pids of this user's live processes whose environment holds every ``key=value`` of ``tag``.

    Linux only (``/proc``); elsewhere the list is empty.
    """
    if not tag or not os.path.isdir("/proc"):
        return []
    skip = set(exclude) | {os.getpid()}
    uid = os.getuid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid in skip:
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            with open(f"/proc/{pid}/stat", "rb") as fh:
                if fh.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
                    continue
        except (OSError, IndexError):
            continue
        env = _environ(pid)
        if env and all(env.get(k) == v for k, v in tag.items()):
            found.append(pid)
    return found


def end_processes(pids: Iterable[int], grace: float = 0.0) -> List[int]:
    """SIGTERM each pid, SIGKILL what is left after ``grace`` seconds; the pids that were signalled."""
    pids = list(pids)
    hit = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM if grace > 0 else signal.SIGKILL)
            hit.append(pid)
        except (ProcessLookupError, PermissionError):
            pass
    if grace > 0 and hit:
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(p) for p in hit):
            time.sleep(0.02)
        for pid in hit:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    return hit


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False
