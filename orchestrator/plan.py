"""The launch plan: from a ``JobSpec`` to the processes of one attempt.

``resolve_plan(spec, servers)`` takes the nodes and devices a backend discovered (orchestrator/backends/)
and does every check that must pass before anything starts (the rank table is valid, the config
resolves, the command exists, the metrics port is free); it raises ``PlanError`` (bad input, exit 2)
otherwise and connects nowhere.  ``attempt_workers(plan, ...)`` then turns the plan into
``WorkerSpec``s with the contract's environment for one attempt, as each node sees it.

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
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

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


def resolve_plan(spec: JobSpec, servers: Sequence[Any], check_config: bool = True) -> JobPlan:
    """The plan from the spec and the discovered ``servers`` (``Backend.discover``): ranks numbered by
    server, then device.  Connects nowhere and writes nothing; PlanError on bad input."""
    from cluster import accelerators
    from cluster.errors import ClusterInputError
    try:
        accelerator = accelerators.resolve(spec.backend, hccn_conf=spec.hccn_conf, npu_smi=spec.npu_smi,
                                           ips=spec.ips, servers=servers)
    except ClusterInputError as exc:
        raise PlanError(str(exc)) from None
    backend = accelerator.name
    mode = spec.mode
    if mode == "auto":
        mode = accelerator.default_mode
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
    for flag, host in (("--sched-host", spec.sched_host), ("--metrics-host", spec.metrics_host)):
        try:
            socket.getaddrinfo(host, None)
        except (socket.gaierror, UnicodeError, ValueError) as exc:
            raise PlanError(f"{flag} {host}: unknown host name ({getattr(exc, 'strerror', None) or exc}); "
                            "give an address of this machine, e.g. 127.0.0.1") from None
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


def _on_node(plan: JobPlan, view: Any) -> Callable[[str], str]:
    """Maps a path under the job dir on this machine to the same path in the node's job dir."""
    root = plan.spec.job_dir

    def move(text: str) -> str:
        if view is None or not root or view.job_dir == root:
            return text
        if text == root or text.startswith(root + "/"):
            return view.job_dir + text[len(root):]
        return text
    return move


def _node_argv(plan: JobPlan, view: Any) -> Tuple[str, ...]:
    """The ranks' argv as a node runs it: its interpreter, its copy of the config, its job dir."""
    move = _on_node(plan, view)
    argv = [move(str(a)) for a in plan.base_argv]
    if view is not None:
        if argv and _is_python(argv[0]):
            argv[0] = view.python
        if view.config and plan.spec.uses_trainer and "--config" in argv[:-1]:
            argv[argv.index("--config") + 1] = view.config
    return tuple(argv)


def _is_python(word: str) -> bool:
    base = os.path.basename(word)
    return word == sys.executable or base in ("python", "python3") or base.startswith("python3.")


def attempt_workers(plan: JobPlan, attempt: int, rendezvous: Optional[Tuple[str, int]] = None,
                    resume: Optional[Mapping[int, str]] = None,
                    node_view: Optional[Callable[[str], Any]] = None) -> List[WorkerSpec]:
    """The processes of one attempt: the scheduler first (dynamic mode), then rank 0..N-1.

    ``rendezvous`` is the scheduler's (address, port) (``Backend.rendezvous``; default: ``--sched-host``
    and ``--sched-port`` or a port free here).  ``node_view(host)`` (``Backend.node_view``) says how each
    node sees the job: its job dir, interpreter, config copy and extra environment; without it every
    node sees this machine's paths.  ``resume`` maps ranks to their checkpoint as their node sees it.
    """
    spec = plan.spec
    n = plan.world_size
    views: Dict[str, Any] = {}

    def view_of(host: str) -> Any:
        if node_view is None:
            return None
        if host not in views:
            views[host] = node_view(host)
        return views[host]

    def job_dir_on(host: str) -> str:
        view = view_of(host)
        return view.job_dir if view is not None else spec.job_dir

    def env_on(host: str, rank_env: RankEnv) -> Dict[str, str]:
        """The node's own extra environment under the job's variables."""
        view = view_of(host)
        base = {str(k): str(v) for k, v in (view.env if view is not None else {}).items()}
        return {**base, **rank_env.to_env()}

    from cluster.accelerators import ACCELERATORS
    accelerator = ACCELERATORS[plan.backend]
    common = RankEnv(rank_size=n, job_id=spec.job_id, attempt=attempt, backend=plan.backend)
    # the trainer's budget to finish and checkpoint its step after SIGTERM: most of the grace, so the
    # rank exits by itself before the launcher's SIGKILL
    stop_save = {"PSPNET_STOP_SAVE_S": f"{0.7 * spec.grace:g}"}
    out: List[WorkerSpec] = []
    if plan.mode == "dynamic":
        sched_addr, port = rendezvous or (spec.sched_host, spec.sched_port or free_port(spec.sched_host))
        common = common.with_(sched_host=str(sched_addr), sched_port=int(port), worker_num=n)
        sched_host = plan.placements[0].host
        sched = common.with_(role=MS_SCHED, host=_host_label(sched_host), job_dir=job_dir_on(sched_host))
        out.append(WorkerSpec(rank=-1, local_rank=-1, device=None, argv=_node_argv(plan, view_of(sched_host)),
                              env=env_on(sched_host, sched), host=sched_host, cwd=spec.cwd or None,
                              role=ROLE_SCHEDULER))
    for p in plan.placements:
        env = accelerator.rank_env(common.with_(rank=p.rank, local_rank=p.local_rank, host=_host_label(p.host),
                                                job_dir=job_dir_on(p.host),
                                                resume=str(resume[p.rank]) if resume and p.rank in resume else None),
                                   p.device)
        if plan.mode == "dynamic":
            env = env.with_(role=MS_WORKER, node_id=p.rank)
        else:
            env = env.with_(rank_table_file=str(Path(job_dir_on(p.host)) / "rank_table.json"))
        cores = plan.binding.get(p.local_rank)
        out.append(WorkerSpec(rank=p.rank, local_rank=p.local_rank, device=p.device,
                              argv=_node_argv(plan, view_of(p.host)), env={**env_on(p.host, env), **stop_save},
                              host=p.host,
                              cwd=spec.cwd or None,
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
