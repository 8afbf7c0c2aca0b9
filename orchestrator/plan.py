"""The launch plan: from a ``JobSpec`` to the processes of one attempt.

``resolve_plan(spec)`` does every check that must pass before anything starts (devices exist,
hccn.conf is well formed, the rank table is valid, the config resolves, the command exists, ports
are free) and raises ``PlanError`` (bad input, exit 2) otherwise.  ``attempt_workers(plan, ...)``
then turns the plan into ``WorkerSpec``s with the contract's environment for one attempt.

The environment of each process is a ``RankEnv`` (``cluster/contracts/env.py``): ranktable mode sets
RANK_TABLE_FILE, dynamic mode the MindSpore scheduler variables (the scheduler process gets MS_SCHED).
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from cluster.contracts.env import MS_SCHED, MS_WORKER, RankEnv
from cluster.proc import free_port, port_is_free
from orchestrator.jobspec import JobSpec, SpecError
from orchestrator.workers import ROLE_SCHEDULER, ROLE_WORKER, WorkerSpec


class PlanError(SpecError):
    """Bad input found while planning; nothing was started."""


@dataclass(frozen=True)
class Placement:
    rank: int
    local_rank: int
    device: Optional[int]
    host: str = "localhost"
    device_ip: Optional[str] = None


@dataclass
class JobPlan:
    spec: JobSpec
    backend: str                       # cpu | ascend | gpu
    mode: str                          # dynamic | ranktable
    placements: List[Placement]
    base_argv: List[str]               # what every rank (and the scheduler) runs
    rank_table: Optional[Dict[str, Any]] = None
    binding: Dict[int, List[int]] = field(default_factory=dict)   # local rank -> cores
    binding_notes: List[str] = field(default_factory=list)
    config: Optional[Dict[str, Any]] = None
    config_sha: Optional[str] = None

    @property
    def world_size(self) -> int:
        return len(self.placements)

    @property
    def ranks(self) -> List[int]:
        return [p.rank for p in self.placements]


def validate_trainer_config(spec: JobSpec) -> Dict[str, Any]:
    """Resolve the trainer config in a child process (no trainer import here); PlanError when bad."""
    argv = [sys.executable, "-m", "trainer.config", "--config", spec.config, *spec.overrides, "--json"]
    try:
        proc = subprocess.run(argv, cwd=spec.cwd or None, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PlanError(f"cannot check the config with `{' '.join(argv)}`: {exc}") from None
    if proc.returncode != 0:
        msg = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        text = msg[-1] if msg else f"exit code {proc.returncode}"
        if text.startswith("error: "):
            text = text[len("error: "):]
        raise PlanError(f"--config {spec.config}: {text}")
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise PlanError(f"--config {spec.config}: `python -m trainer.config` printed no JSON") from None


def resolve_command(spec: JobSpec, backend: str = "cpu") -> List[str]:
    """The argv every rank runs: the trainer, or ``--cmd`` with ``python`` mapped to this interpreter."""
    if spec.uses_trainer:
        config = spec.config
        p = Path(os.path.expanduser(config))
        if not p.is_absolute() and (Path(spec.cwd) / p).is_file():
            config = str(Path(spec.cwd) / p)
        return [sys.executable, "-m", "trainer.train", "--config", config, "--backend", backend, *spec.overrides]
    argv = list(spec.cmd or [])
    if not argv:
        raise PlanError("--cmd: empty command")
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
        script = argv[1] if len(argv) > 1 else None
        if script and script.endswith(".py") and not (Path(spec.cwd) / script).is_file():
            raise PlanError(f"--cmd: script not found: {script} (relative to {spec.cwd})")
    elif os.sep in argv[0]:
        exe = Path(spec.cwd) / os.path.expanduser(argv[0])
        if not exe.is_file() or not os.access(exe, os.X_OK):
            raise PlanError(f"--cmd: {argv[0]} is not an executable file")
    elif shutil.which(argv[0]) is None:
        raise PlanError(f"--cmd: command not found: {argv[0]!r} (not on PATH)")
    return argv + list(spec.overrides)


def _servers(spec: JobSpec, backend: str):
    from cluster.devices import ClusterInputError, discover_local
    try:
        if spec.hosts:
            try:
                from orchestrator import multihost  # issue 5: SSH launcher
            except ImportError:
                raise PlanError("--hosts: the multi-host launcher (orchestrator/multihost.py) is not available "
                                "in this build; run on one host without --hosts") from None
            return multihost.resolve_servers(spec, backend)
        return [discover_local(backend, devices=spec.devices, hccn_conf=spec.hccn_conf, npu_smi=spec.npu_smi,
                               **spec.discover_options())]
    except ClusterInputError as exc:
        raise PlanError(str(exc)) from None


def resolve_plan(spec: JobSpec, check_config: bool = True) -> JobPlan:
    """Everything that must hold before a process starts; PlanError otherwise."""
    servers = _servers(spec, spec.backend)
    has_ips = any(d.ip for s in servers for d in s.devices)
    backend = spec.backend
    if backend == "auto":
        backend = "ascend" if (has_ips or spec.hccn_conf or spec.npu_smi or spec.ips) else "cpu"
    mode = spec.mode
    if mode == "auto":
        mode = "ranktable" if backend == "ascend" else "dynamic"
    if mode == "ranktable" and backend != "ascend":
        raise PlanError(f"--mode ranktable needs HCCL (--backend ascend); the {backend} backend uses "
                        "--mode dynamic")
    placements: List[Placement] = []
    for s in servers:
        host = s.host or "localhost"
        for local, d in enumerate(s.devices):
            placements.append(Placement(rank=len(placements), local_rank=local, device=d.device_id,
                                        host=host, device_ip=d.ip))
    if not placements:
        raise PlanError("--devices: no devices selected")
    rank_table = None
    if mode == "ranktable":
        from cluster.devices import ClusterInputError
        from cluster.ranktable import build_rank_table
        try:
            rank_table = build_rank_table(servers, version=spec.rank_table_format, rules=spec.rank_table_rules)
        except ClusterInputError as exc:
            raise PlanError(str(exc)) from None
    base_argv = resolve_command(spec, backend)
    plan = JobPlan(spec=spec, backend=backend, mode=mode, placements=placements, base_argv=base_argv,
                   rank_table=rank_table)
    bind = spec.bind_cores if spec.bind_cores is not None else (backend == "ascend")
    if bind:
        from cluster.binding import make_binding_plan
        per_host = max(sum(1 for p in placements if p.host == h) for h in {p.host for p in placements})
        bp = make_binding_plan(per_host)
        plan.binding = {int(k): list(v) for k, v in bp.cores_by_rank.items()}
        plan.binding_notes = list(bp.notes)
    if spec.sched_port is not None and not port_is_free(spec.sched_port, spec.sched_host):
        raise PlanError(f"--sched-port {spec.sched_port}: port is busy on {spec.sched_host}; pick another "
                        "or leave it out (a free port is chosen)")
    if spec.metrics_port is not None and not port_is_free(spec.metrics_port, spec.metrics_host):
        raise PlanError(f"--metrics-port {spec.metrics_port}: port is busy on {spec.metrics_host}; pick another")
    if spec.uses_trainer and check_config:
        resolved = validate_trainer_config(spec)
        plan.config = resolved.get("config")
        plan.config_sha = resolved.get("config_sha")
    return plan


# ---------------------------------------------------------------- per attempt

def _host_label(host: str) -> str:
    return socket.gethostname() if host in ("localhost", "127.0.0.1", "") else host


def attempt_workers(plan: JobPlan, attempt: int, sched_port: Optional[int] = None,
                    resume: Optional[Mapping[int, str]] = None) -> List[WorkerSpec]:
    """The processes of one attempt: the scheduler first (dynamic mode), then rank 0..N-1."""
    spec = plan.spec
    n = plan.world_size
    common = RankEnv(rank_size=n, job_dir=spec.job_dir, job_id=spec.job_id, attempt=attempt, backend=plan.backend)
    out: List[WorkerSpec] = []
    if plan.mode == "dynamic":
        port = sched_port or spec.sched_port or free_port(spec.sched_host)
        common = common.with_(sched_host=spec.sched_host, sched_port=port, worker_num=n)
        sched_host = plan.placements[0].host
        sched = common.with_(role=MS_SCHED, host=_host_label(sched_host))
        out.append(WorkerSpec(rank=-1, local_rank=-1, device=None, argv=tuple(plan.base_argv),
                              env=sched.to_env(), host=sched_host, cwd=spec.cwd or None, role=ROLE_SCHEDULER))
    for p in plan.placements:
        env = common.with_(rank=p.rank, device_id=p.device, local_rank=p.local_rank, host=_host_label(p.host),
                           resume=str(resume[p.rank]) if resume and p.rank in resume else None)
        if plan.mode == "dynamic":
            env = env.with_(role=MS_WORKER, node_id=p.rank)
        else:
            env = env.with_(rank_table_file=str(Path(spec.job_dir) / "rank_table.json"))
        cores = plan.binding.get(p.local_rank)
        out.append(WorkerSpec(rank=p.rank, local_rank=p.local_rank, device=p.device, argv=tuple(plan.base_argv),
                              env=env.to_env(), host=p.host, cwd=spec.cwd or None,
                              cpu_affinity=tuple(cores) if cores else None, role=ROLE_WORKER))
    return out


def describe_plan(plan: JobPlan, workers: List[WorkerSpec]) -> str:
    """The --dry-run text: what would start, with which environment and binding."""
    spec = plan.spec
    lines = [f"job {spec.job_id}: {plan.world_size} rank(s), backend {plan.backend}, mode {plan.mode}",
             f"job dir: {spec.job_dir}",
             f"command: {shlex.join(plan.base_argv)}"]
    if plan.config_sha:
        lines.append(f"config: {spec.config} (config_sha {plan.config_sha})")
    lines.append(f"restarts: up to {spec.max_restarts}; hang timeout {spec.hang_timeout:g} s "
                 f"(startup {spec.startup_timeout:g} s); grace {spec.grace:g} s (after a failure "
                 f"{spec.failure_grace:g} s)")
    if plan.rank_table is not None:
        from cluster.ranktable import rank_table_json
        lines.append("rank table (rank_table.json):")
        lines.extend("  " + l for l in rank_table_json(plan.rank_table).rstrip().splitlines())
    if plan.binding:
        lines.append("core binding:")
        for lr, cores in sorted(plan.binding.items()):
            from cluster.binding import format_cpu_list
            lines.append(f"  local rank {lr}: cores {format_cpu_list(cores)}")
        lines.extend("  " + n for n in plan.binding_notes)
    else:
        lines.append("core binding: off (--bind-cores to enable)")
    for w in workers:
        env = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in sorted(w.env.items()))
        where = f" on {w.host}" if w.host != "localhost" else ""
        lines.append(f"{w.name}{where}: {env}")
    return "\n".join(lines)
