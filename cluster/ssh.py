"""SSH with fabric: short commands on many hosts, file copies, and long-running remote processes.

Local side (imports fabric lazily, so ``python -m cluster.ssh`` stays light on the remote side):

``connect(host)``
    A ``fabric.Connection`` for a ``cluster.hosts.HostSpec`` (user, port, identity file, timeouts).
``run(conn, command, host=..)`` / ``run_parallel(items, fn)``
    One command with ``warn=True``; the outcome is always a ``CommandResult`` value (exit code, output,
    or the SSH failure worded for a person): failures are data, never exceptions.
``put_bytes(conn, remote_path, data)``
    Copy a file by SFTP: written to a temporary name, then renamed (readers never see a part, and a
    shared file system where source and destination are the same file is safe).
``remote_command(argv, env, cwd)`` / ``wrapped_command(...)``
    The shell line sent to the remote host; every word goes through ``shlex.quote``.
``RemoteProcess``
    A process started on an SSH channel under the wrapper below; its merged output is delivered line by
    line to a callback; ``terminate``/``kill`` reach its whole process group.

Remote side, ``python -m cluster.ssh wrap [--grace S] [--watch-stdin] [--affinity 0,1] -- ARGV...``: starts
ARGV in a new session (its own process group, with PR_SET_PDEATHSIG, pinned to the given cores), reports ``@pspnet-wrap {"pid": ...}``, and
- on ``TERM``/``KILL`` lines on its stdin signals the whole group,
- when its stdin reaches EOF (the SSH channel closed) or its parent changes (sshd's session process
  went away: the connection dropped), or on SIGTERM/SIGHUP/SIGINT: SIGTERM to the group, then SIGKILL
  after the grace period,
- when ARGV exits, kills what is left of the group and reports ``@pspnet-wrap {"exit": CODE}``
  (subprocess convention: ``-S`` for a signal) before exiting with the same status (128+S).
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, TypeVar

from cluster.contracts.exitcodes import ExitCode
from cluster.proc import BLOCK, LineSplitter, describe_exit, signal_group, spawn

WRAP_MARKER = "@pspnet-wrap "
#: Exit code of a process whose SSH connection was lost (what ``ssh`` itself returns for its errors).
EXIT_SSH_LOST = 255
CONNECT_TIMEOUT = 10

T = TypeVar("T")
R = TypeVar("R")


class SSHError(RuntimeError):
    """An SSH-level failure (connect, authentication, channel), worded for a person."""


class ChannelRefused(SSHError):
    """The server refused one more channel on this connection (sshd's MaxSessions reached)."""


# ---------------------------------------------------------------- connections

def connect(host: Any, *, connect_timeout: float = CONNECT_TIMEOUT, keepalive: int = 5):
    """A (not yet opened) fabric Connection for a HostSpec."""
    import logging

    from fabric import Config, Connection

    # paramiko logs what we report ourselves, worded for the user (e.g. a refused channel): keep it off
    # the console unless the application configures logging
    plog = logging.getLogger("paramiko")
    if not plog.handlers:
        plog.addHandler(logging.NullHandler())

    kwargs: Dict[str, Any] = {}
    if getattr(host, "identity_file", None):
        kwargs["key_filename"] = [os.path.expanduser(host.identity_file)]
        kwargs["look_for_keys"] = False
    config = Config(overrides={"run": {"hide": True, "warn": True, "in_stream": False}})
    conn = Connection(host.address, user=host.user or None, port=int(host.port),
                      connect_timeout=int(max(1, connect_timeout)), connect_kwargs=kwargs, config=config)
    conn._pspnet_keepalive = keepalive  # noqa: SLF001 - applied in ensure_open
    return conn


def ensure_open(conn, host_label: str = "") -> None:
    """Open ``conn`` if needed; raise ``SSHError`` with a clear cause."""
    try:
        conn.open()
        keep = getattr(conn, "_pspnet_keepalive", 0)
        if keep and conn.transport is not None:
            conn.transport.set_keepalive(keep)
    except Exception as exc:  # noqa: BLE001 - every connect failure becomes one clear line
        raise SSHError(describe_ssh_error(exc, conn, host_label)) from None


def describe_ssh_error(exc: BaseException, conn=None, host_label: str = "") -> str:
    """One line that says what went wrong with SSH and what to check."""
    import paramiko

    target = f"{conn.user}@{conn.host}:{conn.port}" if conn is not None else host_label
    name = type(exc).__name__
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return f"cannot connect to {target}: connection refused (is sshd running and the port right?)"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"cannot connect to {target}: timed out (host down or port filtered?)"
    if isinstance(exc, socket.gaierror):
        return f"cannot connect to {target}: unknown host name ({exc.strerror or exc})"
    if isinstance(exc, paramiko.ssh_exception.AuthenticationException):
        return f"SSH authentication failed for {target} (check user and identity_file)"
    if isinstance(exc, paramiko.ssh_exception.BadHostKeyException):
        return f"host key of {target} does not match known_hosts (was the host reinstalled?)"
    if isinstance(exc, FileNotFoundError):
        return f"cannot connect to {target}: identity file not found ({exc.filename or exc})"
    if isinstance(exc, OSError):
        return f"cannot connect to {target}: {exc.strerror or exc}"
    if isinstance(exc, (EOFError, paramiko.ssh_exception.SSHException)):
        return f"SSH connection to {target} failed: {exc or name}"
    return f"SSH to {target} failed: {name}: {exc}"


# ---------------------------------------------------------------- short commands

@dataclass(frozen=True)
class CommandResult:
    """What one remote command did.  ``error`` is set when SSH itself failed (then ``exited`` is None)."""
    host: str
    command: str
    exited: Optional[int]
    stdout: str = ""
    stderr: str = ""
    error: Optional[str] = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and self.exited == 0

    def reason(self) -> str:
        """One line: the SSH error, or the exit code with the last line of output."""
        if self.error:
            return self.error
        if self.exited == 0:
            return "ok"
        tail = (self.stderr.strip() or self.stdout.strip()).splitlines()
        return f"exit {self.exited}" + (f": {tail[-1].strip()}" if tail else "")


def run(conn, command: str, *, host: str = "", timeout: Optional[float] = None) -> CommandResult:
    """Run ``command`` with ``warn=True``; the result, whatever happens (never raises for SSH trouble)."""
    label = host or getattr(conn, "host", "")
    t0 = time.monotonic()
    try:
        ensure_open(conn, label)
        res = conn.run(command, hide=True, warn=True, in_stream=False, pty=False,
                       timeout=int(timeout) if timeout else None)
    except SSHError as exc:
        return CommandResult(label, command, None, error=str(exc), seconds=time.monotonic() - t0)
    except Exception as exc:  # noqa: BLE001
        from invoke.exceptions import CommandTimedOut
        if isinstance(exc, CommandTimedOut):
            msg = f"command timed out after {timeout:.0f} s on {label}"
        else:
            msg = describe_ssh_error(exc, conn, label)
        return CommandResult(label, command, None, error=msg, seconds=time.monotonic() - t0)
    exited = res.exited
    if exited == -1:   # the channel closed without an exit status
        return CommandResult(label, command, None, res.stdout, res.stderr,
                             error=f"SSH connection to {label} lost during the command",
                             seconds=time.monotonic() - t0)
    return CommandResult(label, command, exited, res.stdout, res.stderr, seconds=time.monotonic() - t0)


def run_parallel(items: Sequence[T], fn: Callable[[T], R], max_workers: int = 64) -> List[R]:
    """``[fn(item) for item in items]`` on threads (one per host, up to ``max_workers``), order kept.

    ``fn`` should return failures as values (``CommandResult`` does); an exception still propagates.
    """
    items = list(items)
    if not items:
        return []
    if len(items) == 1:
        return [fn(items[0])]
    with ThreadPoolExecutor(max_workers=min(max_workers, len(items)), thread_name_prefix="ssh") as pool:
        return list(pool.map(fn, items))


def put_bytes(conn, remote_path: str, data: bytes, *, mode: Optional[int] = None, host: str = "") -> None:
    """Copy ``data`` to ``remote_path`` (parents made) atomically; raises ``SSHError``."""
    import io
    import posixpath
    import uuid

    label = host or getattr(conn, "host", "")
    parent = posixpath.dirname(remote_path) or "."
    made = run(conn, f"mkdir -p -- {shlex.quote(parent)}", host=label)
    if not made.ok:
        raise SSHError(f"{label}: cannot make {parent}: {made.reason()}")
    tmp = posixpath.join(parent, f".{posixpath.basename(remote_path)}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        sftp = conn.sftp()
        sftp.putfo(io.BytesIO(data), tmp)
        if mode is not None:
            sftp.chmod(tmp, mode)
        sftp.posix_rename(tmp, remote_path)
    except Exception as exc:  # noqa: BLE001
        try:
            conn.sftp().remove(tmp)
        except Exception:  # noqa: BLE001
            pass
        raise SSHError(f"{label}: cannot copy to {remote_path}: {exc}") from None


def close_sftp(conn) -> None:
    """Close the connection's cached SFTP session (one channel less held open on the server)."""
    sftp = getattr(conn, "_sftp", None)
    if sftp is not None:
        try:
            sftp.close()
        except Exception:  # noqa: BLE001
            pass
        conn._sftp = None  # noqa: SLF001 - fabric caches it there and reopens on demand


# ---------------------------------------------------------------- command lines

def _check_env_name(name: str) -> str:
    if not name or not (name[0].isalpha() or name[0] == "_") or not all(c.isalnum() or c == "_" for c in name):
        raise ValueError(f"{name!r} is not a valid environment variable name")
    return name


def remote_command(argv: Sequence[str], env: Optional[Mapping[str, str]] = None,
                   cwd: Optional[str] = None) -> str:
    """``cd CWD && exec env K=V ... ARGV`` with every word shell-quoted (no injection possible)."""
    if not argv:
        raise ValueError("empty command")
    words = ["exec", "env"]
    for k, v in (env or {}).items():
        words.append(shlex.quote(f"{_check_env_name(str(k))}={v}"))
    words += [shlex.quote(str(a)) for a in argv]
    line = " ".join(words)
    if cwd:
        line = f"cd {shlex.quote(str(cwd))} && {line}"
    return line


def wrapped_command(python: str, argv: Sequence[str], env: Optional[Mapping[str, str]] = None,
                    cwd: Optional[str] = None, grace: float = 5.0,
                    affinity: Optional[Sequence[int]] = None) -> str:
    """The remote line that runs ``argv`` under the process-group wrapper (``python -m cluster.ssh wrap``)."""
    inner = [python, "-u", "-m", "cluster.ssh", "wrap", "--grace", f"{float(grace):g}", "--watch-stdin"]
    if affinity:
        inner += ["--affinity", ",".join(str(int(c)) for c in affinity)]
    inner += ["--", *argv]
    return remote_command(inner, env, cwd)


# ---------------------------------------------------------------- long-running remote processes

class RemoteProcess:
    """A process started on its own SSH channel under the wrapper.

    ``on_line(text)`` receives every output line (stdout and stderr merged, no newline), from one
    reader thread.  ``exit_code`` follows subprocess (``-S`` for a signal); a lost connection gives
    ``EXIT_SSH_LOST`` with ``reason`` saying so.
    """

    def __init__(self, conn, command: str, on_line: Callable[[str], None], *, label: str = "",
                 on_exit: Optional[Callable[["RemoteProcess"], None]] = None) -> None:
        self.conn = conn
        self.command = command
        self.label = label or getattr(conn, "host", "")
        self.remote_pid: Optional[int] = None
        self.remote_host: Optional[str] = None
        self.exit_code: Optional[int] = None
        self.reason: Optional[str] = None
        self.started = time.time()
        self._on_line = on_line
        self._on_exit = on_exit
        self._done = threading.Event()
        self._tail: List[str] = []
        self._reported_exit: Optional[int] = None
        self._stop_sent: Optional[str] = None
        self._rfd, self._wfd = os.pipe()
        ensure_open(conn, self.label)
        try:
            self.channel = conn.create_session()
            self.channel.set_combine_stderr(True)
            self.channel.exec_command(command)
        except Exception as exc:  # noqa: BLE001
            self._close_fds()
            import paramiko
            if isinstance(exc, paramiko.ChannelException):
                raise ChannelRefused(f"{self.label}: the server refused another session on this connection "
                                     f"({exc}); sshd's MaxSessions is reached") from None
            raise SSHError(f"{self.label}: cannot start a remote command: {describe_ssh_error(exc, conn)}") from None
        self._reader = threading.Thread(target=self._pump, name=f"ssh-out-{self.label}", daemon=True)
        self._reader.start()

    # -- output
    def _deliver(self, text: str) -> None:
        if WRAP_MARKER in text:
            before, _, payload = text.partition(WRAP_MARKER)
            if before:
                self._deliver(before)
            try:
                info = json.loads(payload)
            except ValueError:
                info = {}
            if "pid" in info:
                self.remote_pid = int(info["pid"])
                self.remote_host = info.get("host")
            if "exit" in info:
                self._reported_exit = int(info["exit"])
            return
        self._tail = (self._tail + [text])[-20:]
        try:
            self._on_line(text)
        except Exception as exc:  # noqa: BLE001 - a sink error must not stall the channel
            print(f"pspnet-cluster: output sink of {self.label} failed: {exc}", file=sys.stderr)

    def _pump(self) -> None:
        splitter = LineSplitter()
        lost = False
        try:
            while True:
                try:
                    data = self.channel.recv(BLOCK)
                except (socket.error, EOFError, OSError):
                    lost = True
                    break
                if not data:
                    break
                for line in splitter.feed(data):
                    self._deliver(line)
            for line in splitter.flush():
                self._deliver(line)
            status = -1
            if not lost:
                try:
                    status = self.channel.recv_exit_status()
                except Exception:  # noqa: BLE001
                    status = -1
            self._finish(status)
            if self.reason and (self.exit_code == EXIT_SSH_LOST or self.remote_pid is None):
                # say it in the output too, so the failure report's last lines show the cause
                try:
                    self._on_line(f"pspnet-cluster: {self.reason}")
                except Exception:  # noqa: BLE001
                    pass
        finally:
            try:
                self.channel.close()
            except Exception:  # noqa: BLE001
                pass
            if self._on_exit is not None:   # before done: whoever waits sees a closed sink
                try:
                    self._on_exit(self)
                except Exception:  # noqa: BLE001
                    pass
            self._done.set()
            try:
                os.write(self._wfd, b"x")
            except OSError:
                pass

    def _finish(self, status: int) -> None:
        if self._reported_exit is not None:
            self.exit_code = self._reported_exit
            if self.exit_code != 0:
                self.reason = describe_exit(self.exit_code)
        elif status == -1:
            self.exit_code = EXIT_SSH_LOST
            self.reason = f"SSH connection to {self.label} lost"
        else:
            # the wrapper did not report: it could not start (python or the project missing on the host)
            self.exit_code = status if status != 0 else 1
            tail = [t for t in self._tail if t.strip()]
            self.reason = f"remote command failed on {self.label} (exit {status})" + (
                f": {tail[-1].strip()}" if tail else "")

    # -- WorkerHandle-like interface
    def poll(self) -> Optional[int]:
        return self.exit_code if self._done.is_set() else None

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        self._done.wait(timeout)
        return self.poll()

    def wait_fd(self) -> int:
        return self._rfd

    def join_output(self, timeout: Optional[float] = None) -> None:
        self._reader.join(timeout)

    def _send(self, word: str) -> bool:
        if self._done.is_set():
            return False
        try:
            self.channel.sendall((word + "\n").encode())
            return True
        except Exception:  # noqa: BLE001 - a dead channel: the wrapper tears down on its own
            return False

    def terminate(self) -> None:
        """SIGTERM to the remote process group."""
        if self._stop_sent is None:
            self._stop_sent = "TERM"
        if not self._send("TERM"):
            self.close_channel()

    def kill(self) -> None:
        """SIGKILL to the remote process group."""
        self._stop_sent = "KILL"
        if not self._send("KILL"):
            self.close_channel()

    def close_channel(self) -> None:
        """Drop the channel: the wrapper sees EOF and tears the group down (TERM, grace, KILL)."""
        try:
            self.channel.shutdown_write()
        except Exception:  # noqa: BLE001
            pass
        try:
            self.channel.close()
        except Exception:  # noqa: BLE001
            pass

    def output_tail(self) -> List[str]:
        return list(self._tail)

    def _close_fds(self) -> None:
        for fd in (self._rfd, self._wfd):
            try:
                os.close(fd)
            except OSError:
                pass
        self._rfd = self._wfd = -1

    def close(self) -> None:
        self.close_channel()
        self.join_output(2.0)
        self._close_fds()


# ---------------------------------------------------------------- the remote wrapper

def _say(obj: Dict[str, Any]) -> None:
    data = (WRAP_MARKER + json.dumps(obj) + "\n").encode()
    try:
        os.write(1, data)
    except OSError:
        pass


def wrap_main(argv: Sequence[str]) -> int:
    """The remote wrapper (see the module doc)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m cluster.ssh wrap")
    ap.add_argument("--grace", type=float, default=5.0, help="seconds between SIGTERM and SIGKILL")
    ap.add_argument("--watch-stdin", action="store_true",
                    help="read TERM/KILL commands on stdin; EOF (channel closed) tears down")
    ap.add_argument("--affinity", default="", help="comma-separated CPU ids to pin the command to")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args(list(argv))
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("no command given after --")
    parent = os.getppid()
    try:
        affinity = [int(c) for c in args.affinity.split(",") if c.strip().isdigit()]
        child = spawn(cmd, stdout=1, affinity=affinity)
    except OSError as exc:
        print(f"cannot start {cmd[0]!r}: {exc.strerror or exc}", flush=True)
        _say({"exit": 127})
        return 127
    _say({"pid": child.pid, "host": socket.gethostname()})
    stop = threading.Event()
    lock = threading.Lock()
    state = {"term_at": None}

    def group(sig: int) -> None:
        signal_group(child.pid, sig)

    def teardown() -> None:
        with lock:
            if state["term_at"] is None:
                state["term_at"] = time.monotonic()
                group(signal.SIGTERM)
        stop.set()

    def on_signal(signum, frame) -> None:  # noqa: ARG001
        teardown()

    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(s, on_signal)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def watch_stdin() -> None:
        buf = b""
        while True:
            try:
                data = os.read(0, 1024)   # raw fd: no buffered-reader lock to trip over at exit
            except OSError:
                data = b""
            if not data:
                teardown()          # the channel closed: nobody is listening any more
                return
            buf += data
            while b"\n" in buf:
                word, buf = buf.split(b"\n", 1)
                word = word.strip().upper()
                if word == b"TERM":
                    teardown()
                elif word == b"KILL":
                    group(signal.SIGKILL)

    if args.watch_stdin:
        threading.Thread(target=watch_stdin, daemon=True).start()
    while True:
        try:
            rc = child.wait(timeout=0.05)
            break
        except subprocess.TimeoutExpired:
            pass
        if os.getppid() != parent:   # sshd's session process is gone: the connection dropped
            teardown()
        with lock:
            t = state["term_at"]
        if t is not None and time.monotonic() - t > args.grace:
            group(signal.SIGKILL)
    group(signal.SIGKILL)   # helpers the rank left behind in its group
    _say({"exit": rc})
    # os._exit: the stdin thread may sit in read(); nothing else needs flushing (all writes are os.write)
    os._exit(rc if rc >= 0 else 128 - rc)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["wrap"]:
        return wrap_main(argv[1:])
    print("usage: python -m cluster.ssh wrap [--grace S] [--watch-stdin] -- ARGV...", file=sys.stderr)
    return ExitCode.BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
