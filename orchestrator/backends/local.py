"""The local backend: every rank is a child process of the launcher on this machine.

Discovery reads this machine's devices (cluster/devices.py: CPU slots, or Ascend devices from
hccn.conf / npu-smi), checkpoints are read from the job dir directly, CPU/memory come from psutil, and
``stop``/``resume`` end the processes that carry the job's tag (``PSPNET_JOB_ID`` and ``PSPNET_JOB_DIR``
in their environment) after their launcher is gone.  Process start-up (own
process group, death with the launcher, core pinning, line pumping) is ``LocalLauncher`` in
orchestrator/workers.py.
"""
from __future__ import annotations

import socket
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence

from orchestrator.backends.base import Backend, RankStats, job_tag

if TYPE_CHECKING:
    from cluster.devices import Server
    from orchestrator.jobspec import JobSpec
    from orchestrator.jobstate import JobState
    from orchestrator.restart_policy import ResumePoint
    from orchestrator.workers import LineSink, WorkerHandle, WorkerSpec


def process_tree_stats(pid: int) -> Optional[Dict[str, Any]]:
    """CPU seconds and RSS of a process and its children (psutil), or None when it is gone."""
    import psutil
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            t = p.cpu_times()
            rss = p.memory_info().rss
        cpu = t.user + t.system
        for c in p.children(recursive=True):
            try:
                ct = c.cpu_times()
                cpu += ct.user + ct.system
                rss += c.memory_info().rss
            except psutil.Error:
                pass
    except psutil.Error:
        return None
    return {"pid": pid, "cpu_seconds": cpu, "rss_bytes": rss}


def end_tagged(tag: Dict[str, str]) -> List[int]:
    """End (SIGKILL) this machine's processes that carry ``tag`` in their environment; their pids."""
    from cluster import proc
    return proc.end_processes(proc.tagged_processes(tag))


class LocalBackend(Backend):
    name = "local"

    def __init__(self, spec: "JobSpec", log: Optional[Callable[[str], None]] = None) -> None:
        super().__init__(spec, log)
        self._launcher: Any = None
        self._handles: Dict[str, "WorkerHandle"] = {}
        self._lock = threading.Lock()

    def discover(self) -> List["Server"]:
        from cluster.accelerators import discover_local
        from cluster.errors import ClusterInputError
        from cluster.proc import port_is_free
        from orchestrator.plan import PlanError
        s = self.spec
        if s.hosts:
            raise PlanError(f"--hosts {s.hosts}: ranks on other hosts need --launcher ssh (or leave --launcher "
                            "out: --hosts picks ssh)")
        try:
            servers = [discover_local(s.backend, devices=s.devices, hccn_conf=s.hccn_conf, npu_smi=s.npu_smi,
                                      **s.discover_options())]
        except ClusterInputError as exc:
            raise PlanError(str(exc)) from None
        if s.sched_port is None:
            from cluster.proc import free_port
            try:   # the scheduler of a local job listens here: the address must be one of this machine
                free_port(s.sched_host)
            except OSError as exc:
                what = "unknown host name" if isinstance(exc, socket.gaierror) else "the scheduler cannot listen there"
                raise PlanError(f"--sched-host {s.sched_host}: {what} ({exc.strerror or exc}); "
                                "give an address of this machine, e.g. 127.0.0.1") from None
        if s.sched_port is not None and not port_is_free(s.sched_port, s.sched_host):
            raise PlanError(f"--sched-port {s.sched_port}: port is busy on {s.sched_host}; pick another "
                            "or leave it out (a free port is chosen)")
        return servers

    def start(self, worker: "WorkerSpec", sink: "LineSink") -> "WorkerHandle":
        from orchestrator.workers import LocalLauncher
        if self._launcher is None:
            self._launcher = LocalLauncher()
        handle = self._launcher.start(worker, sink)
        with self._lock:
            self._handles = {n: h for n, h in self._handles.items() if h.poll() is None}
            self._handles[worker.name] = handle
        return handle

    def checkpoints(self, ranks: Sequence[int]) -> Optional["ResumePoint"]:
        from orchestrator.restart_policy import local_checkpoint_lookup
        return local_checkpoint_lookup(self.spec.job_dir, ranks)

    def stats(self) -> RankStats:
        from orchestrator.workers import ROLE_SCHEDULER
        with self._lock:
            handles = list(self._handles.values())
        out: RankStats = {}
        for h in handles:
            if h.spec.role == ROLE_SCHEDULER or h.pid is None or h.poll() is not None:
                continue
            st = process_tree_stats(h.pid)
            if st is not None:
                out[h.spec.rank] = st
        return out

    def end_attempt(self, workers: Mapping[str, "WorkerHandle"]) -> None:
        super().end_attempt(workers)
        end_tagged(job_tag(self.spec))   # what left its rank's group (a new session, a double fork)

    def stop_leftovers(self, job: "JobState") -> List[str]:
        left = end_tagged(job_tag(self.spec))
        return [f"ended {len(left)} leftover process(es) of the job: {', '.join(map(str, left))}"] if left else []

    def end_strays(self, job: "JobState") -> List[str]:
        left = end_tagged(job_tag(self.spec))
        return [f"ended {len(left)} process(es) of this job left by its previous launcher: "
                + ", ".join(map(str, left))] if left else []
