"""The worker layer: what to start (``WorkerSpec``), how a started worker is driven (``WorkerHandle``),
and how a local one is started (``LocalLauncher``).

The supervisor and the restart policy only ever see specs and handles, so a worker elsewhere plugs in
through a backend (orchestrator/backends/: the SSH backend's handles forward ``terminate``/``kill``
over the connection and feed the remote output into the same sink).

Output: a launcher reads the worker's stdout+stderr (one merged stream) line by line and hands each
line, as ``str`` without its newline, to the ``LineSink`` given at start; the sink splits events from
log lines (orchestrator/capture.py).  ``sink.close()`` is called once the stream ends.

Exit codes follow ``subprocess``: ``0`` ok, ``N > 0`` exit status, ``-S`` killed by signal ``S``.

LocalLauncher starts each worker
- through ``cluster.proc.spawn``: in its own session / process group (``terminate``/``kill`` signal the whole group, so a trainer's
  own helper processes go too),
- with ``PR_SET_PDEATHSIG = SIGKILL`` (cluster/proc.py, in the child before exec): if the launcher is
  killed, even with SIGKILL, the kernel kills the worker; no rank outlives its launcher,
- with the CPU affinity of its spec (``os.sched_setaffinity`` in the child),
- and exposes a pidfd (``wait_fd``) so the supervisor can sleep in ``select`` and still see a death
  within milliseconds.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Protocol, Tuple, runtime_checkable

from cluster import proc as proc_ctl

LOCAL_HOSTS = ("", "localhost", "127.0.0.1", None)

#: Roles a worker can have.
ROLE_WORKER = "worker"
ROLE_SCHEDULER = "scheduler"


@dataclass(frozen=True)
class WorkerSpec:
    """Everything needed to start one process of a job, wherever it runs.

    ``env`` holds only what the job adds (RANK_ID, MS_ROLE, ...); a local launcher lays it over its
    own environment, a remote one sends it to the remote shell.  ``rank`` is -1 for the scheduler.
    """
    rank: int
    local_rank: int
    device: Optional[int]
    argv: Tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    host: str = "localhost"
    cwd: Optional[str] = None
    cpu_affinity: Optional[Tuple[int, ...]] = None
    role: str = ROLE_WORKER

    @property
    def name(self) -> str:
        """``rank_<R>`` or ``scheduler``: the name of its log file and of its console prefix."""
        return ROLE_SCHEDULER if self.role == ROLE_SCHEDULER else f"rank_{self.rank}"

    @property
    def is_local(self) -> bool:
        return self.host in LOCAL_HOSTS

    def to_dict(self) -> Dict[str, object]:
        return {"name": self.name, "role": self.role, "rank": self.rank, "local_rank": self.local_rank,
                "device": self.device, "host": self.host, "argv": list(self.argv), "env": dict(self.env),
                "cwd": self.cwd, "cpu_affinity": list(self.cpu_affinity) if self.cpu_affinity else None}


@runtime_checkable
class LineSink(Protocol):
    """Receives one worker's output, line by line (no trailing newline)."""

    def line(self, text: str) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class WorkerHandle(Protocol):
    """A started worker.  All methods are safe to call after the worker has exited."""

    spec: WorkerSpec
    pid: Optional[int]          # the process id where it runs (remote pid for a remote worker)

    def poll(self) -> Optional[int]:
        """Exit code (see module doc) or None while it runs; never blocks."""

    def terminate(self) -> None:
        """Ask it (its whole process group) to stop: SIGTERM."""

    def kill(self) -> None:
        """Force it (its whole process group): SIGKILL."""

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        """Wait up to ``timeout`` seconds; the exit code, or None if still running."""

    def wait_fd(self) -> Optional[int]:
        """A file descriptor that becomes readable when the worker exits, or None (then poll)."""

    def join_output(self, timeout: Optional[float] = None) -> None:
        """Wait until its output has been fully delivered to the sink."""


class LaunchError(RuntimeError):
    """A worker could not be started (command not found, bad cwd, remote host unreachable...)."""


# ---------------------------------------------------------------- local processes

class LocalWorker:
    """A worker running as a child process of this launcher."""

    def __init__(self, spec: WorkerSpec, proc: subprocess.Popen, sink: LineSink) -> None:
        self.spec = spec
        self.proc = proc
        self.pid: Optional[int] = proc.pid
        self.started = time.time()
        self._sink = sink
        self._pidfd: Optional[int] = None
        try:
            self._pidfd = os.pidfd_open(proc.pid)  # type: ignore[attr-defined]
        except (AttributeError, OSError):
            self._pidfd = None
        self._reader = threading.Thread(target=self._pump, name=f"out-{spec.name}", daemon=True)
        self._reader.start()

    def _deliver(self, text: str) -> None:
        try:
            self._sink.line(text)
        except Exception as exc:  # noqa: BLE001 - a sink error must not stall the worker's pipe
            print(f"pspnet-cluster: output sink of {self.spec.name} failed: {exc}", file=sys.stderr)

    def _pump(self) -> None:
        stream = self.proc.stdout
        try:
            if stream is not None:
                proc_ctl.pump_lines(stream.fileno(), self._deliver)
        except (OSError, ValueError):
            pass
        finally:
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
            try:
                self._sink.close()
            except Exception:  # noqa: BLE001
                pass

    def poll(self) -> Optional[int]:
        return self.proc.poll()

    def terminate(self) -> None:
        if self.proc.poll() is None:
            proc_ctl.signal_group(self.proc.pid, signal.SIGTERM)

    def kill(self) -> None:
        # also after the leader exited: its helpers may still hold the group
        proc_ctl.signal_group(self.proc.pid, signal.SIGKILL)

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def wait_fd(self) -> Optional[int]:
        return self._pidfd

    def join_output(self, timeout: Optional[float] = None) -> None:
        self._reader.join(timeout)

    def close(self) -> None:
        if self._pidfd is not None:
            try:
                os.close(self._pidfd)
            except OSError:
                pass
            self._pidfd = None

    def __repr__(self) -> str:
        return f"LocalWorker({self.spec.name}, pid={self.pid}, rc={self.proc.returncode})"


class LocalLauncher:
    """Starts workers on this machine with ``subprocess.Popen`` (see the module doc)."""

    def __init__(self, base_env: Optional[Mapping[str, str]] = None) -> None:
        self.base_env = dict(os.environ if base_env is None else base_env)

    def start(self, spec: WorkerSpec, sink: LineSink) -> LocalWorker:
        if not spec.is_local:
            raise LaunchError(f"{spec.name}: host {spec.host!r} is not this machine; "
                              "ranks on other hosts need --launcher ssh (--hosts FILE)")
        env = dict(self.base_env)
        env.update({k: str(v) for k, v in spec.env.items()})
        env.setdefault("PYTHONUNBUFFERED", "1")
        try:
            proc = proc_ctl.spawn(spec.argv, env=env, cwd=spec.cwd, affinity=spec.cpu_affinity)
        except FileNotFoundError:
            raise LaunchError(f"{spec.name}: command not found: {spec.argv[0]!r}") from None
        except PermissionError as exc:
            raise LaunchError(f"{spec.name}: cannot execute {spec.argv[0]!r}: {exc.strerror}") from None
        except (NotADirectoryError, OSError) as exc:
            raise LaunchError(f"{spec.name}: cannot start {' '.join(spec.argv)!r}: {exc}") from None
        return LocalWorker(spec, proc, sink)

