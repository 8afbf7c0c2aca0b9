"""The Slurm backend: ranks run as the tasks of one ``srun`` step per attempt, inside an allocation.

``pspnet-cluster launch`` runs inside ``sbatch``/``salloc`` (SLURM_JOB_ID set; ``pspnet-cluster submit``
writes such a batch script).  Slurm owns the nodes and the processes; the launcher keeps what it
adds on top: the plan (rank table, environment), supervision, restarts, the event stream.

- ``discover``: the allocation's nodes (SLURM_JOB_NODELIST, expanded in Python), ``--devices`` per node,
  checked against the CPUs the job holds there; then one probe task per node (``cluster/slurm_task.py probe``)
  proves that every node sees the job dir (a token file written here), and reports its devices (on
  Ascend their IPs, for the rank table).  Any failing node is a ``PlanError``: nothing started.
- ``rendezvous``: the scheduler runs on the first node (its NodeAddr), on a port derived from the
  Slurm job id and the attempt (cluster/slurm.py), so concurrent jobs on a node never pick the same.
- ``start_all``: writes ``slurm/attempt_<N>.json`` (each rank's argv and env, as planned) into the
  job dir and starts ``srun --ntasks-per-node D --distribution block --kill-on-bad-exit --label``;
  every task maps its SLURM_PROCID to its rank (cluster/slurm_task.py run), task 0 also runs the
  scheduler.  The labelled output is split by task into the ranks' line sinks, so logs/ and events/
  are what the other backends write.  One handle per rank (and the scheduler) is a view of the step.
- A rank that dies fails its task, and Slurm brings the step down (SIGTERM to every task, SIGKILL
  after KillWait); ``terminate``/``kill`` signal the step with ``scancel --signal``.  The launcher's
  death kills srun (PDEATHSIG), and Slurm ends a step whose srun is gone.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

from cluster.contracts.jobdir import SLURM as SLURM_DIR
from orchestrator.backends.base import Backend, write_local_files

if TYPE_CHECKING:
    from cluster.devices import Server
    from orchestrator.backends.base import RankStats
    from cluster.slurm import SlurmEnv
    from orchestrator.jobspec import JobSpec
    from orchestrator.jobstate import JobState
    from orchestrator.plan import JobPlan
    from orchestrator.restart_policy import ResumePoint
    from orchestrator.workers import LineSink, WorkerHandle, WorkerSpec

SLURM_JSON = f"{SLURM_DIR}/slurm.json"   # in the job dir: the Slurm job this job runs in (status, stop)
PROBE_TIMEOUT = 120.0
START_TIMEOUT = 300.0            # srun waits this long at most for the step's resources
OUTSIDE_STOP_DELAY = 0.3         # seconds a rank's exit is held back when Slurm stopped the step
_LABEL = re.compile(r"^\s*(\d+): ?(.*)$")
# the CPU/GPU probe of one node (sh -c SCRIPT sh TOKEN_FILE): does it see the job dir's token file?
_SH_PROBE = ('if t=$(cat -- "$1" 2>&1); then echo "{c}sees $SLURMD_NODENAME $t"; '
             'else echo "{c}blind $SLURMD_NODENAME $t"; fi')


def _plan_error(msg: str):
    from orchestrator.plan import PlanError
    return PlanError(msg)


def slurm_tool(name: str) -> str:
    """Path of a Slurm client program; PlanError when it is not installed here."""
    path = shutil.which(name)
    if not path:
        raise _plan_error(f"{name} not found on PATH: the slurm launcher needs Slurm's client programs "
                          "(srun, scontrol, scancel) on the node that runs pspnet-cluster")
    return path


def task_command() -> List[str]:
    """How a task starts the wrapper: this interpreter without site-packages (-S: it needs none, and
    skipping them saves most of an interpreter's start-up on every rank's start), by path."""
    import cluster.slurm_task
    return [sys.executable, "-S", os.path.abspath(cluster.slurm_task.__file__)]


def read_slurm_json(job_dir: str) -> Dict[str, Any]:
    try:
        data = json.loads((Path(job_dir) / SLURM_JSON).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def slurm_job_state(job_id: str) -> Optional[str]:
    """PENDING, RUNNING, COMPLETED, CANCELLED, ... as scontrol reports it; None when Slurm forgot it."""
    scontrol = shutil.which("scontrol")
    if not scontrol:
        return None
    try:
        res = subprocess.run([scontrol, "-o", "show", "job", str(job_id)], capture_output=True, text=True,
                             timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"\bJobState=(\S+)", res.stdout)
    return m.group(1) if m else None


def submitted_status(job_dir: str) -> Optional[Dict[str, Any]]:
    """``status`` of a job `submit` queued whose launcher has not started yet (no job.json); None if the
    dir holds no submitted job."""
    data = read_slurm_json(job_dir)
    if not data.get("job_id"):
        return None
    jid = str(data["job_id"])
    return {"job_id": Path(job_dir).name, "job_dir": str(Path(job_dir).resolve()), "state": "submitted",
            "launcher_kind": "slurm",
            "launcher_status": {"slurm_job": jid, "slurm_state": slurm_job_state(jid) or "unknown to Slurm"},
            "message": "queued with Slurm; the launcher writes job.json when the batch job starts"}


def cancel_submitted(job_dir: str) -> Optional[str]:
    """``stop`` of a submitted job that has not started: scancel it.  A line for the user, or None."""
    data = read_slurm_json(job_dir)
    jid, scancel = data.get("job_id"), shutil.which("scancel")
    if not jid or not scancel:
        return None
    res = subprocess.run([scancel, str(jid)], capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        return f"scancel {jid} failed: {res.stderr.strip()}"
    return f"scancel {jid}: the queued Slurm job is cancelled (`sbatch {Path(job_dir) / 'job.sbatch'}` queues it again)"


# ---------------------------------------------------------------- the step and its handles

class TaskHandle:
    """One rank (or the scheduler) of a running step; see ``WorkerHandle`` in orchestrator/workers.py."""

    def __init__(self, spec: "WorkerSpec", step: "SlurmStep") -> None:
        self.spec = spec
        self.step = step
        self.pid: Optional[int] = None
        self.node: Optional[str] = None
        self.code: Optional[int] = None
        self.usage: Optional[Tuple[float, int]] = None      # (cpu seconds, rss bytes) its task reported
        self.pending: Optional[int] = None                   # an exit held back (see SlurmStep._control)
        self._done = threading.Event()
        self._rfd, self._wfd = os.pipe()

    def set_exit(self, code: int) -> None:
        if self._done.is_set():
            return
        self.code = int(code)
        self._done.set()
        if self._wfd is not None:
            os.close(self._wfd)     # the read end turns readable: the supervisor's select wakes
            self._wfd = None

    def poll(self) -> Optional[int]:
        return self.code

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        self._done.wait(timeout)
        return self.code

    def terminate(self) -> None:
        if self.code is None:
            self.step.signal(signal.SIGTERM)

    def kill(self) -> None:
        self.step.signal(signal.SIGKILL)

    def wait_fd(self) -> Optional[int]:
        return self._rfd

    def join_output(self, timeout: Optional[float] = None) -> None:
        self.step.join_output(timeout)

    def close(self) -> None:
        for fd in (self._rfd, self._wfd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._rfd = self._wfd = None

    def __repr__(self) -> str:
        return f"TaskHandle({self.spec.name} on {self.node}, pid={self.pid}, rc={self.code})"


class SlurmStep:
    """One ``srun`` of an attempt: reads its labelled output and turns it into per-rank lines and exits."""

    def __init__(self, argv: List[str], workers: Sequence["WorkerSpec"], sinks: Dict[str, "LineSink"],
                 job_id: str, srun_log: Path) -> None:
        from orchestrator.workers import ROLE_SCHEDULER
        self.job_id = job_id
        self.step_id: Optional[str] = None
        self.argv = argv
        self.srun_log = srun_log
        self.handles: Dict[str, TaskHandle] = {}
        self.by_task: Dict[int, TaskHandle] = {}
        self.sched: Optional[TaskHandle] = None
        self.sinks = sinks
        self.stderr: List[str] = []
        self._signalled: set = set()
        self._lock = threading.Lock()
        self.outside_stop = False
        self.on_outside_stop: Optional[Callable[[], None]] = None
        for w in workers:
            h = TaskHandle(w, self)
            self.handles[w.name] = h
            if w.role == ROLE_SCHEDULER:
                self.sched = h
            else:
                self.by_task[len(self.by_task)] = h
        self.started = threading.Event()     # every task reported its rank's pid, or srun ended
        from cluster.proc import child_setup
        # srun dies with the launcher (PDEATHSIG), and Slurm ends a step whose srun is gone
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True, bufsize=0,
                                     preexec_fn=child_setup())
        self._out = threading.Thread(target=self._read_out, name="srun-out", daemon=True)
        self._err = threading.Thread(target=self._read_err, name="srun-err", daemon=True)
        self._out.start()
        self._err.start()

    # ------------------------------------------------------------ output
    def _sink(self, h: TaskHandle) -> Optional["LineSink"]:
        return self.sinks.get(h.spec.name)

    def _deliver(self, h: Optional[TaskHandle], text: str) -> None:
        sink = self._sink(h) if h is not None else None
        if sink is None:
            return
        try:
            sink.line(text)
        except Exception as exc:  # noqa: BLE001 - a sink error must not stall srun's pipe
            print(f"pspnet-cluster: output sink of {h.spec.name} failed: {exc}", file=sys.stderr)

    def _control(self, task: int, h: Optional[TaskHandle], words: str) -> None:
        from cluster.slurm_task import CONTROL  # noqa: F401  (the protocol's one definition)
        kind, _, rest = words.partition(" ")
        if kind == "sched":
            self._deliver(self.sched, rest)
        elif kind == "sched-pid" and self.sched is not None:
            self.sched.pid = int(rest)
        elif kind == "sched-exit" and self.sched is not None:
            self.sched.set_exit(int(rest))
        elif kind == "pid" and h is not None:
            parts = rest.split()
            h.pid, h.node = int(parts[0]), (parts[1] if len(parts) > 1 else None)
            if len(parts) > 2 and parts[2]:
                self.step_id = parts[2]
            if task == 0 and self.sched is not None:
                self.sched.node = h.node         # task 0 runs the scheduler
            if all(x.pid is not None for x in self.by_task.values()):
                self.started.set()
        elif kind == "exit" and h is not None:
            words = rest.split()
            code = int(words[0])
            if "signalled" in words[1:] and code != 0 and self._stopped_from_outside():
                # Slurm ended the step itself (scancel, preemption, a time limit): a stop, not a rank's
                # failure.  The launcher is told first (as a SIGTERM to itself would), and the exit
                # reaches the supervisor a moment later, when it is already stopping the attempt.
                h.pending = code
                threading.Timer(OUTSIDE_STOP_DELAY, h.set_exit, (code,)).start()
            else:
                h.set_exit(code)
        elif kind == "stats" and h is not None:
            cpu, rss = rest.split()
            h.usage = (float(cpu), int(rss))

    def _stopped_from_outside(self) -> bool:
        """A TERM the launcher did not send, before any rank failed (srun's --kill-on-bad-exit TERMs the
        others after a failure): Slurm is ending the step.  Stop the job (once) and say so."""
        with self._lock:
            if signal.SIGTERM in self._signalled or signal.SIGKILL in self._signalled:
                return False
            if any(h.code not in (None, 0) for h in self.handles.values()):
                return False
            if not self.outside_stop:
                self.outside_stop = True
                if self.on_outside_stop is not None:
                    self.on_outside_stop()
            return True

    def _line(self, text: str) -> None:
        from cluster.slurm_task import CONTROL
        m = _LABEL.match(text)
        if not m:
            self._deliver(self.by_task.get(0), text)
            return
        task, body = int(m.group(1)), m.group(2)
        h = self.by_task.get(task)
        if body.startswith(CONTROL):
            try:
                self._control(task, h, body[len(CONTROL):])
            except (ValueError, IndexError):
                self._deliver(h, body)
        else:
            self._deliver(h, body)

    def _read_out(self) -> None:
        from cluster.proc import pump_lines
        assert self.proc.stdout is not None
        try:
            pump_lines(self.proc.stdout.fileno(), self._line)
        finally:
            self.proc.wait()
            self._err.join(5.0)
            if any(h.pending is not None and h.code is None for h in self.handles.values()):
                time.sleep(OUTSIDE_STOP_DELAY)
            # tasks that reported no exit were ended by Slurm (the step was cancelled or killed)
            for h in self.handles.values():
                h.set_exit(h.pending if h.pending is not None else -int(signal.SIGKILL))
            self.started.set()
            for h in self.handles.values():
                sink = self._sink(h)
                if sink is not None:
                    try:
                        sink.close()
                    except Exception:  # noqa: BLE001
                        pass

    def _read_err(self) -> None:
        """srun's own messages: kept for errors, and in slurm/srun.log."""
        from cluster.proc import pump_lines
        assert self.proc.stderr is not None
        try:
            log = open(self.srun_log, "a", encoding="utf-8", buffering=1)
        except OSError:
            log = None

        def line(text: str) -> None:
            self.stderr.append(text)
            del self.stderr[:-50]
            if log is not None:
                log.write(text + "\n")
        try:
            pump_lines(self.proc.stderr.fileno(), line)
        finally:
            if log is not None:
                log.close()

    def join_output(self, timeout: Optional[float] = None) -> None:
        self._out.join(timeout)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None or self._out.is_alive()

    # ------------------------------------------------------------ control
    def signal(self, sig: int) -> None:
        """Signal every task of the step (once per signal); the step's processes, wherever they run."""
        with self._lock:
            # every rank and the scheduler reported its end: the tasks are exiting on their own, and
            # Slurm ends whatever they leave when the step ends
            if sig in self._signalled or not self.running or all(h.code is not None for h in self.handles.values()):
                return
            self._signalled.add(sig)
        name = signal.Signals(sig).name[3:]
        scancel = shutil.which("scancel")
        done = False
        if scancel and self.step_id is not None:
            try:
                done = subprocess.run([scancel, f"--signal={name}", f"{self.job_id}.{self.step_id}"],
                                      capture_output=True, timeout=15).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                done = False
        if not done and self.proc.poll() is None:
            # srun ends the step when it is signalled or killed itself
            try:
                self.proc.send_signal(signal.SIGKILL if sig == signal.SIGKILL else signal.SIGTERM)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        for h in self.handles.values():
            h.close()


# ---------------------------------------------------------------- the backend

class SlurmBackend(Backend):
    name = "slurm"

    def __init__(self, spec: "JobSpec", log: Optional[Callable[[str], None]] = None) -> None:
        super().__init__(spec, log)
        self._alloc: Optional["SlurmEnv"] = None
        self._addrs: Dict[str, str] = {}
        self._per_node = 0
        self._steps: List[SlurmStep] = []

    # ------------------------------------------------------------ the allocation
    def allocation(self) -> "SlurmEnv":
        from cluster.slurm import SlurmEnv, SlurmError
        if self._alloc is None:
            try:
                alloc = SlurmEnv.from_env()
            except SlurmError as exc:
                raise _plan_error(str(exc)) from None
            if alloc is None:
                raise _plan_error("--launcher slurm: not inside a Slurm allocation (SLURM_JOB_ID is not set); "
                                  "run `pspnet-cluster launch` inside sbatch or salloc, or let "
                                  "`pspnet-cluster submit` write and submit the batch script")
            self._alloc = alloc
        return self._alloc

    def discover(self) -> List["Server"]:
        from cluster.errors import ClusterInputError
        from cluster.devices import Device, Server, parse_visible_devices
        from cluster.slurm import node_addresses
        alloc = self.allocation()
        slurm_tool("srun")
        s = self.spec
        try:
            if s.backend in ("cpu", "gpu", "auto") and not (s.hccn_conf or s.npu_smi):
                wanted = parse_visible_devices(s.devices, None, "--devices")
            else:
                wanted = None
        except ClusterInputError as exc:
            raise _plan_error(str(exc)) from None
        count = len(wanted) if wanted is not None else None
        for node in alloc.nodes:
            cpus = alloc.cpus_of(node)
            if count is not None and cpus is not None and count > cpus:
                raise _plan_error(
                    f"--devices {s.devices}: {count} rank(s) per node, but this Slurm job holds {cpus} CPU(s) on "
                    f"{node} (SLURM_JOB_CPUS_PER_NODE={os.environ.get('SLURM_JOB_CPUS_PER_NODE')}); ask sbatch/salloc "
                    f"for --ntasks-per-node={count} or use --devices {cpus}")
        # the node addresses (scontrol) are asked for while the probe step runs: neither needs the other
        addrs: Dict[str, str] = {}
        asking = threading.Thread(target=lambda: addrs.update(node_addresses(alloc.nodes)), daemon=True)
        asking.start()
        try:
            # CPU (and GPU) slots need no look at the nodes; auto may find NPUs there, so it asks them
            slots = wanted if s.backend in ("cpu", "gpu") else None
            reports = self._probe(alloc, "cpu" if slots is not None else s.backend)
        finally:
            asking.join()
        self._addrs = addrs
        servers = []
        for node in alloc.nodes:
            rep = reports[node]
            if slots is not None:
                devs = tuple(Device(device_id=i, logical_id=k) for k, i in enumerate(slots))
            else:
                devs = tuple(Device(**d) for d in rep["devices"] or ())
            servers.append(Server(server_id=self._addrs.get(node, node), devices=devs, host=node,
                                  host_ip=self._addrs.get(node)))
        counts = {len(sv.devices) for sv in servers}
        if len(counts) != 1:
            raise _plan_error("--devices: the nodes report different device counts (" + ", ".join(
                f"{sv.host}: {len(sv.devices)}" for sv in servers) + "); srun starts the same number of tasks on "
                "every node")
        self._per_node = counts.pop()
        return servers

    def _probe(self, alloc: "SlurmEnv", probe_backend: str) -> Dict[str, Dict[str, Any]]:
        """One task per node: does it see the job dir, which devices does it have?  PlanError otherwise."""
        from cluster.slurm_task import CONTROL
        s = self.spec
        job_dir = Path(s.job_dir)
        made = not job_dir.exists()
        try:
            job_dir.mkdir(parents=True, exist_ok=True)
            token_path = job_dir / f".slurm-preflight-{secrets.token_hex(4)}"
            token = secrets.token_hex(8)
            token_path.write_text(token + "\n")
        except OSError as exc:
            raise _plan_error(f"{job_dir}: cannot write the job dir ({exc.strerror or exc})") from None
        n = len(alloc.nodes)
        argv = [slurm_tool("srun"), f"--nodes={n}", f"--ntasks={n}", "--ntasks-per-node=1", "--mpi=none",
                "--kill-on-bad-exit=1", "--label", f"--job-name=pspnet-probe-{s.job_id}"]
        if probe_backend in ("cpu", "gpu"):
            # only the job dir is asked about: a shell answers it without an interpreter's start-up per node
            argv += ["/bin/sh", "-c", _SH_PROBE.format(c=CONTROL), "sh", str(token_path)]
        else:
            argv += [*task_command(), "probe", "--token", str(token_path),
                     "--devices", str(s.devices), "--backend", probe_backend]
            if s.hccn_conf:
                argv += ["--hccn-conf", s.hccn_conf]
            if s.npu_smi:
                argv += ["--npu-smi", s.npu_smi]
        try:
            from cluster.proc import child_setup
            res = subprocess.run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT,
                                 cwd=s.cwd or None, preexec_fn=child_setup())
        except subprocess.TimeoutExpired:
            raise _plan_error(f"preflight: `srun` did not run the probe within {PROBE_TIMEOUT:g} s "
                              "(are the allocation's nodes busy with another step?)") from None
        finally:
            try:
                token_path.unlink()
                if made:
                    job_dir.rmdir()      # a dry run leaves nothing behind; launch makes it again
            except OSError:
                pass
        reports: Dict[str, Dict[str, Any]] = {}
        for line in res.stdout.splitlines():
            m = _LABEL.match(line)
            body = m.group(2) if m else line
            if body.startswith(CONTROL + "probe "):
                try:
                    rep = json.loads(body[len(CONTROL + "probe "):])
                except ValueError:
                    continue
                reports[rep.get("node", "")] = rep
            elif body.startswith(CONTROL + "sees ") or body.startswith(CONTROL + "blind "):
                kind, node, said = (body[len(CONTROL):].split(" ", 2) + [""])[:3]
                reports[node] = {"node": node, "devices": None, "error": None,
                                 "token": said.strip() if kind == "sees" else None,
                                 "token_error": said.split(": ")[-1].strip() if kind == "blind" else None}
        problems = []
        for node in alloc.nodes:
            rep = reports.get(node)
            if rep is None:
                problems.append(f"{node}: no report from the probe task")
            elif rep.get("token") != token:
                problems.append(f"{node}: does not see the job dir {job_dir} "
                                f"({rep.get('token_error') or 'another file is there'}); the job dir must be on a "
                                "file system every node mounts at the same path (pick one with --job-dir)")
            elif rep.get("error"):
                problems.append(f"{node}: {rep['error']}")
            elif probe_backend not in ("cpu", "gpu") and not rep.get("devices"):
                problems.append(f"{node}: no devices for --devices {s.devices}")
        if problems:
            tail = [l for l in res.stderr.splitlines() if l.strip()][-5:]
            srun = ("\n  srun said: " + "\n  ".join(tail)) if tail and any(p.endswith("probe task") for p in problems) \
                else ""
            raise _plan_error("preflight on the Slurm nodes failed:\n  " + "\n  ".join(problems) + srun)
        return reports

    # ------------------------------------------------------------ per attempt
    def node_addr(self, node: str) -> str:
        return self._addrs.get(node, node)

    def rendezvous(self, plan: "JobPlan", attempt: int) -> Tuple[str, int]:
        from cluster.slurm import scheduler_port
        alloc = self.allocation()
        first = plan.placements[0].host if plan.placements else alloc.nodes[0]
        port = self.spec.sched_port or scheduler_port(alloc.job_id, attempt)
        return self.node_addr(first), int(port)

    def prepare(self, plan: "JobPlan") -> None:
        write_local_files(plan)
        from cluster.contracts.jobdir import atomic_write_json
        alloc = self.allocation()
        path = Path(self.spec.job_dir) / SLURM_JSON
        path.parent.mkdir(parents=True, exist_ok=True)
        data = read_slurm_json(self.spec.job_dir)
        # the Slurm job is ours to cancel (`stop`) when it runs the job.sbatch `submit` wrote (its job
        # name says so); inside someone's salloc, `stop` ends our launcher and leaves the allocation
        ours = os.environ.get("SLURM_JOB_NAME") == f"pspnet-{self.spec.job_id}"
        if data.get("job_id") != alloc.job_id:
            data = {"job_id": alloc.job_id, "batch": ours}
        data.update({"nodes": alloc.nodes, "partition": alloc.partition})
        atomic_write_json(path, data)

    def srun_argv(self, attempt: int, ntasks: int, attempt_file: str) -> List[str]:
        """The one srun command line of an attempt."""
        alloc = self.allocation()
        per_node = self._per_node or max(1, ntasks // max(1, len(alloc.nodes)))
        nodes = -(-ntasks // per_node)
        argv = [shutil.which("srun") or "srun", f"--nodes={nodes}", f"--ntasks={ntasks}",
                f"--ntasks-per-node={per_node}", "--distribution=block", "--kill-on-bad-exit=1", "--label",
                "--mpi=none", f"--job-name=pspnet-{self.spec.job_id}-a{attempt}"]
        bind = self.spec.bind_cores if self.spec.bind_cores is not None else self.spec.backend == "ascend"
        if bind:
            argv.append("--cpu-bind=cores")    # Slurm splits each node's CPUs between its tasks
        return argv + [*task_command(), "run", attempt_file]

    def describe(self, plan: "JobPlan", workers: Sequence["WorkerSpec"]) -> List[str]:
        alloc = self.allocation()
        attempt_file = str(Path(self.spec.job_dir) / SLURM_DIR / "attempt_0.json")
        ranks = [w for w in workers if w.role != "scheduler"]
        lines = [f"slurm: job {alloc.job_id}, nodes {', '.join(alloc.nodes)} "
                 f"({', '.join(f'{n}={self.node_addr(n)}' for n in alloc.nodes)})",
                 "slurm: attempt N runs one step (task i = rank i; task 0 also runs the scheduler):",
                 "  " + shlex.join(self.srun_argv(0, len(ranks), attempt_file))]
        return lines

    def start(self, worker: "WorkerSpec", sink: "LineSink") -> "WorkerHandle":
        return self.start_all([worker], {worker.name: sink})[worker.name]

    def start_all(self, workers: Sequence["WorkerSpec"],
                  sinks: Dict[str, "LineSink"]) -> Dict[str, "WorkerHandle"]:
        from cluster.contracts.env import RankEnv
        from cluster.contracts.jobdir import atomic_write_json
        from orchestrator.workers import ROLE_SCHEDULER, LaunchError
        ranks = sorted((w for w in workers if w.role != ROLE_SCHEDULER), key=lambda w: w.rank)
        sched = [w for w in workers if w.role == ROLE_SCHEDULER]
        if not ranks:
            raise LaunchError("the slurm launcher starts ranks as one step; this attempt has none")
        planned = RankEnv.from_env(ranks[0].env).attempt
        attempt = planned if planned is not None else len(self._steps)
        d = Path(self.spec.job_dir) / SLURM_DIR
        d.mkdir(parents=True, exist_ok=True)
        attempt_file = d / f"attempt_{attempt}.json"

        def entry(w: "WorkerSpec") -> Dict[str, Any]:
            return {"rank": w.rank, "local_rank": w.local_rank, "host": w.host, "argv": list(w.argv),
                    "env": dict(w.env), "cwd": w.cwd}
        atomic_write_json(attempt_file, {"attempt": attempt, "tasks": [entry(w) for w in ranks],
                                         "scheduler": entry(sched[0]) if sched else None,
                                         "scheduler_linger": 30.0})
        argv = self.srun_argv(attempt, len(ranks), str(attempt_file))
        for old in self._steps:
            old.close()
        try:
            step = SlurmStep(argv, [*sched, *ranks], dict(sinks), self.allocation().job_id,
                             Path(self.spec.job_dir) / SLURM_DIR / "srun.log")
        except OSError as exc:
            raise LaunchError(f"cannot run srun: {exc}") from None
        step.on_outside_stop = self._outside_stop
        self._steps = [step]
        if not step.started.wait(START_TIMEOUT):
            self.log(f"slurm: the step's tasks have not all started after {START_TIMEOUT:g} s; waiting on")
        if not step.running and any(h.pid is None for h in step.by_task.values()):
            step.join_output(5.0)
            said = "\n  ".join(step.stderr[-8:]) or f"srun exit code {step.proc.returncode}"
            raise LaunchError(f"srun could not start the ranks:\n  {said}")
        return dict(step.handles)

    def _outside_stop(self) -> None:
        """Slurm is ending the step (the job was cancelled, preempted or ran out of time): the launcher
        stops the job as on SIGTERM, so it ends resumable instead of counting a failure."""
        self.log("slurm: Slurm signalled the ranks (scancel, preemption or time limit): stopping the job")
        os.kill(os.getpid(), signal.SIGTERM)

    # ------------------------------------------------------------ after
    def checkpoints(self, ranks: Sequence[int]) -> Optional["ResumePoint"]:
        from orchestrator.restart_policy import local_checkpoint_lookup
        return local_checkpoint_lookup(self.spec.job_dir, ranks)    # the job dir is shared

    def stats(self) -> "RankStats":
        """CPU and memory of each live rank, as its task reports them every few seconds."""
        out: "RankStats" = {}
        for st in list(self._steps):
            for h in st.by_task.values():
                if h.code is None and h.usage is not None and h.pid is not None:
                    out[h.spec.rank] = {"pid": h.pid, "cpu_seconds": h.usage[0], "rss_bytes": h.usage[1]}
        return out

    def status(self, job: "JobState") -> Dict[str, Any]:
        data = read_slurm_json(str(job.job_dir))
        if not data.get("job_id"):
            return {}
        return {"slurm_job": data["job_id"], "slurm_state": slurm_job_state(data["job_id"]) or "unknown to Slurm"}

    def stop_elsewhere(self, job: "JobState") -> List[str]:
        """The launcher runs on the batch node: cancel the batch job (the script passes SIGTERM on)."""
        return self.stop_leftovers(job)

    def stop_leftovers(self, job: "JobState") -> List[str]:
        """Cancel the Slurm job a submitted job runs in (its launcher ends the ranks and marks the job
        stopped); a job launched inside someone's own allocation is left to them."""
        data = read_slurm_json(str(job.job_dir))
        jid = data.get("job_id")
        scancel = shutil.which("scancel")
        if not jid or not scancel:
            return []
        state = slurm_job_state(jid)
        if state not in ("PENDING", "RUNNING", "SUSPENDED", "CONFIGURING", "REQUEUED", "RESIZING"):
            return []
        if data.get("batch"):
            res = subprocess.run([scancel, str(jid)], capture_output=True, text=True, timeout=30)
            if res.returncode != 0:
                return [f"scancel {jid} failed: {res.stderr.strip()}"]
            return [f"scancel {jid}: Slurm job cancelled (was {state}); the job stays resumable: "
                    f"`sbatch {Path(job.job_dir) / 'job.sbatch'}` or `pspnet-cluster resume {job.job_dir}`"]
        return []

    def close(self) -> None:
        for st in self._steps:
            if st.running:
                st.signal(signal.SIGKILL)
        self._steps = []
