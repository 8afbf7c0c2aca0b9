"""The backend interface: everything that depends on *where* a job's ranks run.

The orchestrator's own parts (planning, the runner's attempt loop, supervision, restarts, the job dir,
``status``/``stop``/``resume``, the metrics exporter) are the same wherever ranks run.  What differs
between this machine, hosts reached over SSH and a scheduler's allocation (Slurm; Kubernetes later) is
behind one small class, ``Backend``.  A job's life, and which method is called when::

    backend = open_backend(spec, log)        # orchestrator/backends/__init__.py (by spec.launcher)
    servers = backend.discover()             # facts: nodes and their devices (preflight included)
    plan = resolve_plan(spec, servers)       # pure: no connection, no file written
    # --- launch --dry-run stops here: describe_plan(...) + backend.describe(plan, workers)
    for every attempt:
        backend.prepare(plan)                # side effects: files each node needs (first call only)
        resume = backend.checkpoints(plan.ranks)            # after a failure, and on ``resume``
        host, port = backend.rendezvous(plan, attempt)      # dynamic mode only
        workers = attempt_workers(plan, attempt, (host, port), resume.paths, backend.node_view)
        handles = backend.start_all(workers, sinks)        # -> start(worker, sink) per worker
        ... Supervisor polls/terminates/kills the handles ...
        backend.end_attempt(handles)
    backend.stats()                          # any time, from the metrics exporter's thread
    backend.close()                          # always (the commands use ``with backend:``)

``status``, ``stop`` and ``resume`` reopen the backend a job was launched with (job.json's
``spec.launcher``) and call ``status(job)``, ``stop_leftovers(job)``, ``end_strays(job)`` and
``checkpoints(ranks)``.

Conventions every backend keeps, so events, logs and checkpoints look the same everywhere:

- A worker is a ``WorkerSpec`` (orchestrator/workers.py): rank, local rank, device, argv, the env the job
  adds (RANK_ID, RANK_SIZE, DEVICE_ID, MS_ROLE, MS_SCHED_HOST, MS_SCHED_PORT, MS_WORKER_NUM, MS_NODE_ID,
  RANK_TABLE_FILE, PSPNET_*), ``host`` (the node's name as ``discover`` gave it in ``Server.host``) and
  ``role`` (``worker`` or ``scheduler``; the scheduler has rank -1).  The env and argv are already the
  node's view (paths from ``node_view``); a backend adds only what the place itself needs (its base
  environment, ``PYTHONUNBUFFERED=1``) and must not rewrite them.
- A handle (``WorkerHandle`` in orchestrator/workers.py) answers ``poll``/``wait`` with subprocess exit
  codes (``0``, ``N > 0``, ``-S`` for a signal), ``terminate``/``kill`` reach the worker's whole process
  group, ``pid`` is its process id where it runs (None until known), ``wait_fd`` may return a descriptor
  that turns readable at exit (else None: the supervisor polls), ``join_output`` waits for its output.
- Output: every line the worker prints (stdout and stderr merged) goes, without its newline, to
  ``sink.line(text)``; ``sink.close()`` once the stream has ended.  The sink (orchestrator/capture.py)
  splits events from log lines and writes ``logs/`` and ``events/`` in the job dir on this machine.
- A worker must not outlive the launcher: if the launcher dies (even by SIGKILL), its workers die
  (PDEATHSIG locally, the wrapper watching its channel over SSH, the step's lifetime under a scheduler).
- Bad input found by ``discover`` raises ``PlanError`` (exit 2, nothing started anywhere); a node that
  cannot be prepared or a worker that cannot start raises ``LaunchError`` (the attempt fails, no
  restart).
- No module-level state: connections, sessions and handles belong to the backend object, and
  ``close()`` releases them.  Two jobs in one process use two objects.

Room for schedulers: ``start_all`` may start every worker of an attempt as one unit (one ``srun`` step,
one pod group) and return one handle per worker; ``rendezvous`` may derive the scheduler address from
the allocation (first node, a port from the scheduler's job id), the way Kubernetes operators set
``MS_SCHED_HOST``; ``prepare`` may place the rank table where the nodes read it (a shared job dir, a
ConfigMap mounted there) as long as each node finds it as ``rank_table.json`` in the job dir its
``node_view`` names (that path is the ranks' ``RANK_TABLE_FILE``).
"""
from __future__ import annotations

import abc
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

if TYPE_CHECKING:   # types only: the interface must not pull planning or the runner in at import
    from cluster.devices import Server
    from orchestrator.jobspec import JobSpec
    from orchestrator.jobstate import JobState
    from orchestrator.plan import JobPlan
    from orchestrator.restart_policy import ResumePoint
    from orchestrator.workers import LineSink, WorkerHandle, WorkerSpec

#: ``{rank: {"pid": int, "cpu_seconds": float, "rss_bytes": float}}``: what ``Backend.stats`` returns
RankStats = Dict[int, Dict[str, Any]]


@dataclass(frozen=True)
class NodeView:
    """How one node sees the job: the paths and interpreter its ranks are given.

    ``job_dir``: the job dir as that node reaches it (the same path on a shared file system).
    ``python``: the interpreter that replaces ``python``/this interpreter as a worker's argv[0].
    ``config``: the resolved trainer config's path on that node, replacing the ``--config`` value of the
    trainer's argv (None: keep the value the plan has).
    ``env``: extra environment for every process on that node (the hostfile's ``env``), under the job's.
    """
    job_dir: str
    python: str = sys.executable
    config: Optional[str] = None
    env: Mapping[str, str] = field(default_factory=dict)


class Backend(abc.ABC):
    """Where ranks run.  Subclasses set ``name`` and implement the abstract methods.

    ``__init__(spec, log)``: ``spec`` is the job's ``JobSpec`` (``spec.job_dir`` is the job dir on the
    launching machine, absolute), ``log(text)`` prints a launcher message (console).  The constructor
    must be cheap and must not connect anywhere: ``status`` opens one backend per job it lists.
    """

    #: the name ``--launcher`` takes and job.json stores (``spec.launcher``)
    name: ClassVar[str] = ""

    def __init__(self, spec: "JobSpec", log: Optional[Callable[[str], None]] = None) -> None:
        self.spec = spec
        self.log: Callable[[str], None] = log or (lambda text: None)

    # ------------------------------------------------------------ before planning
    @abc.abstractmethod
    def discover(self) -> List["Server"]:
        """The nodes the job runs on and the devices it uses on each, in rank order.

        One ``cluster.devices.Server`` per node, in the order ranks are numbered (rank 0 is the first
        device of the first server); ``Server.host`` is the node's name, used as ``WorkerSpec.host`` and
        the ``host`` of its events.  ``spec.devices`` selects devices per node; ``spec.backend`` says
        which accelerator to look for (``auto``: Ascend when found).  Everything that must hold on a node
        before anything starts is checked here (reachable, Python and the checkout there, devices exist,
        ``--sched-port`` free, disk): all nodes or none; raise ``PlanError`` naming each failing node.
        """

    # ------------------------------------------------------------ after planning
    def describe(self, plan: "JobPlan", workers: Sequence["WorkerSpec"]) -> List[str]:
        """Extra ``--dry-run`` lines (e.g. the command line each node would run).  Nothing is started."""
        return []

    def prepare(self, plan: "JobPlan") -> None:
        """Put in place what every node needs before its ranks start: the rank table (``plan.rank_table``,
        at the path ``node_view(host).job_dir``/rank_table.json), the resolved config, the job dir on
        each node, a scheduler placement.  Called before every attempt: the first call does the work,
        later ones return at once.  Raises ``LaunchError`` when a node cannot be prepared."""
        write_local_files(plan)

    def node_view(self, host: str) -> NodeView:
        """How node ``host`` (a ``Server.host`` from ``discover``) sees the job; see ``NodeView``."""
        return NodeView(job_dir=self.spec.job_dir)

    def rendezvous(self, plan: "JobPlan", attempt: int) -> Tuple[str, int]:
        """(address, port) of the dynamic cluster's scheduler (MS_SCHED_HOST/MS_SCHED_PORT) for one
        attempt; the scheduler process runs on the first node.  ``spec.sched_port`` when given, else a
        port free on that node now (a fresh one per attempt, so a lingering old scheduler never clashes).
        Only called in dynamic mode."""
        from cluster.proc import free_port
        return self.spec.sched_host, int(self.spec.sched_port or free_port(self.spec.sched_host))

    @abc.abstractmethod
    def start(self, worker: "WorkerSpec", sink: "LineSink") -> "WorkerHandle":
        """Start one worker where ``worker.host`` says and return its handle at once (do not wait for it
        to get going).  Its output goes to ``sink`` line by line (see the module doc).  Raises
        ``LaunchError`` with one line a person can act on; nothing of this worker is left running."""

    def start_all(self, workers: Sequence["WorkerSpec"],
                  sinks: Mapping[str, "LineSink"]) -> Dict[str, "WorkerHandle"]:
        """Start every worker of an attempt (``sinks`` by ``worker.name``); ``{name: handle}``.

        The default starts them one by one with ``start`` (each returns as soon as its process exists,
        so they run in parallel).  A scheduler that starts a whole attempt as one unit overrides this.
        If one cannot start, the ones already started are killed and the ``LaunchError`` re-raised."""
        started: Dict[str, "WorkerHandle"] = {}
        try:
            for w in workers:
                started[w.name] = self.start(w, sinks[w.name])
        except BaseException:
            for h in started.values():
                h.kill()
            for h in started.values():
                h.wait(2.0)
            raise
        return started

    def end_attempt(self, workers: Mapping[str, "WorkerHandle"]) -> None:
        """Called when an attempt is over (success included), after the supervisor brought it down:
        nothing a rank started may outlive its attempt.  The default SIGKILLs every worker's process
        group; a backend whose ranks can leave their group (a new session, a double fork) also ends the
        processes that carry the job's tag (``job_tag``) where they ran."""
        for h in workers.values():
            h.kill()

    # ------------------------------------------------------------ during and after the job
    @abc.abstractmethod
    def checkpoints(self, ranks: Sequence[int]) -> Optional["ResumePoint"]:
        """The newest checkpoint every rank in ``ranks`` holds intact, where each node keeps it.

        Intact: its sidecar is there and the file's sha256 matches; all chosen files share one
        ``config_sha``.  ``ResumePoint.paths`` maps each rank to its file *as its node sees it* (it
        becomes that rank's ``PSPNET_RESUME``).  None when there is no such step (the group starts
        from scratch).  Used before a restart and by ``resume``; the job dir layout is
        cluster/contracts/jobdir.py (``ckpt/rank_<R>/``)."""

    def stats(self) -> RankStats:
        """CPU seconds and resident memory of each live rank (its process and its children), for the
        metrics exporter (called from its thread while the job runs; must not block long).  Ranks this
        backend cannot measure are left out: the exporter then reports them from events alone."""
        return {}

    def status(self, job: "JobState") -> Dict[str, Any]:
        """What the place itself says about a job, e.g. ``{"slurm_state": "RUNNING"}``; {} if nothing.
        ``status JOB_DIR`` prints one ``key: value`` line each (``--json``: under ``launcher_status``).
        Must be cheap and must not fail: ``status`` calls it for every job it lists."""
        return {}

    def stop_elsewhere(self, job: "JobState") -> List[str]:
        """``stop`` of a job whose launcher runs on another machine: ask the place to stop it (a
        scheduler cancels the job; the launcher then ends the ranks and marks the job stopped).  Lines
        for the user; [] when this backend cannot (``stop`` then says where to run it)."""
        return []

    @abc.abstractmethod
    def stop_leftovers(self, job: "JobState") -> List[str]:
        """``stop``, once the launcher was asked to stop or found dead: end what is left of the job where
        its ranks ran (processes that outlived their launcher, found by the job's tag, ``job_tag``; a
        scheduler's job the launcher ran in).  The job must stay resumable.  Returns one line per thing
        it did, for the user; [] when nothing was left."""

    def end_strays(self, job: "JobState") -> List[str]:
        """``resume``, before its first attempt: end the processes of the job that outlived a launcher
        that died (found by ``job_tag``), and nothing else (never the allocation ``resume`` may be running
        in).  Lines for the user, [] when there were none.  Default: none to look for."""
        return []

    def close(self) -> None:
        """Release connections and anything else this object holds; safe to call twice."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---------------------------------------------------------------- helpers backends share

def job_tag(spec: "JobSpec", job_dir: Optional[str] = None) -> Dict[str, str]:
    """What every process of the job carries in its environment, on a node whose view of the job dir
    is ``job_dir`` (default: this machine's): how leftovers are found (``cluster.proc.tagged_processes``)."""
    from cluster.contracts.env import RankEnv
    return RankEnv(job_id=spec.job_id, job_dir=job_dir or spec.job_dir).to_env()


def write_local_files(plan: "JobPlan") -> None:
    """The rank table in the job dir on this machine (what ``prepare`` does where nodes share it)."""
    if plan.rank_table is not None:
        from cluster.contracts.jobdir import JobPaths
        from cluster.ranktable import write_rank_table
        write_rank_table(JobPaths(plan.spec.job_dir).rank_table, plan.rank_table)
