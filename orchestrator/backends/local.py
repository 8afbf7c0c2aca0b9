"""The local backend: every rank is a child process of the launcher on this machine.

Discovery reads this machine's devices (cluster/devices.py: CPU slots, or Ascend devices from
hccn.conf / npu-smi), checkpoints are read from the job dir directly, CPU/memory come from psutil, and
``stop`` kills leftover ranks by pid after checking their ``PSPNET_JOB_ID``.  Process start-up (own
process group, death with the launcher, core pinning, line pumping) is ``LocalLauncher`` in
orchestrator/workers.py.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence

from cluster.contracts.env import RankEnv, RankEnvError
from orchestrator.backends.base import Backend, RankStats, job_pids

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


def job_processes_here(job_id: str, pids: Sequence[int]) -> List[int]:
    """Those of ``pids`` alive on this machine whose environment says they belong to job ``job_id``."""
    import psutil
    out = []
    for pid in pids:
        try:
            pid_job = RankEnv.from_env(psutil.Process(pid).environ()).job_id
        except (psutil.Error, RankEnvError):
            continue
        if pid_job == job_id:
            out.append(pid)
    return out


def kill_groups(pids: Sequence[int]) -> None:
    """SIGKILL each pid's process group (a rank leads its own), or the pid alone when it leads none."""
    for pid in pids:
        for fn in (os.killpg, os.kill):
            try:
                fn(pid, signal.SIGKILL)
                break
            except (ProcessLookupError, PermissionError):
                continue


class LocalBackend(Backend):
    name = "local"

    def __init__(self, spec: "JobSpec", log: Optional[Callable[[str], None]] = None) -> None:
        super().__init__(spec, log)
        self._launcher: Any = None
        self._handles: Dict[str, "WorkerHandle"] = {}
        self._lock = threading.Lock()

    def discover(self) -> List["Server"]:
        from cluster.devices import ClusterInputError, discover_local
        from orchestrator.plan import PlanError
        s = self.spec
        try:
            return [discover_local(s.backend, devices=s.devices, hccn_conf=s.hccn_conf, npu_smi=s.npu_smi,
                                   **s.discover_options())]
        except ClusterInputError as exc:
            raise PlanError(str(exc)) from None

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

    def stop_leftovers(self, job: "JobState") -> List[str]:
        left = job_processes_here(str(job.data.get("job_id")), [pid for _, pid in job_pids(job)])
        if not left:
            return []
        kill_groups(left)
        return [f"killed {len(left)} leftover rank process(es): {', '.join(map(str, left))}"]
