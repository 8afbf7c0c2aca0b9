"""The SSH backend: ranks on other servers, started and supervised over SSH (fabric).

Supervision, restarts, the job dir and monitoring are the runner's and stay the same as for local
ranks; this backend owns what depends on the hosts:

``discover``
    Reads the hostfile (cluster/hosts.py), opens one SSH connection per host and runs the preflight on
    every host in parallel (cluster/preflight.py): all-or-nothing, one line per failing host, nothing
    started anywhere when one fails.  One ``Server`` per host (``server.host`` = the host's name) in
    hostfile order, so ranks are numbered by server, then device, and a rank table is merged from them.
``node_view`` / ``rendezvous``
    Each host's job dir (``job_root``/JOB_ID), interpreter, config copy and ``env``; the dynamic
    cluster's scheduler on the first host, at a port free there for each attempt.
``prepare``
    Makes the job dir on every host and copies the rank table and the resolved trainer config there
    (SFTP, atomic), once per job.
``start``
    Runs a ``WorkerSpec`` on its host under the process-group wrapper of cluster/ssh.py, with its
    environment and shell-quoted argv.  Output comes back over the channel, line by line, into the same
    sink (logs/, events/) as a local rank's.
``checkpoints``
    No shared file system is assumed: asks every host which checkpoints its ranks hold (sidecars), picks
    the newest global step every rank holds, and has each host verify the sha256 of its files of that step.
``stop_leftovers`` / ``end_strays``
    Asks each host to end the job's processes still running there (found by the job's tag: its
    ``PSPNET_JOB_ID`` and the host's job dir in their environment).

The backend object owns its connections (``HostSession``) and ``close()`` closes them.

Remote helper: ``python -m orchestrator.backends.ssh checkpoints --job-dir D --ranks 0,1 [--verify STEP]``
prints the host's checkpoints as one JSON line; ``... leftovers --job-id J --job-dir D`` ends the
host's processes tagged with that job and prints their pids; ``... free-port`` prints a port free there.
Nothing here imports fabric or MindSpore at import time.
"""
from __future__ import annotations

import json
import os
import posixpath
import shlex
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from cluster.contracts.exitcodes import ExitCode
from orchestrator.backends.base import Backend, NodeView, write_local_files

if TYPE_CHECKING:
    from cluster.devices import Server
    from orchestrator.jobspec import JobSpec
    from orchestrator.jobstate import JobState
    from orchestrator.plan import JobPlan
    from orchestrator.restart_policy import ResumePoint
    from orchestrator.workers import LineSink, WorkerSpec

CKPT_MARK = "@pspnet-ckpts "
LEFT_MARK = "@pspnet-leftovers "
HOSTS_JSON = "hosts.json"
#: long-running processes per SSH connection (sshd's MaxSessions defaults to 10 channels per connection)
PROCESSES_PER_CONNECTION = 6
CONFIG_COPY = "config.resolved.yaml"
LOOPBACK = ("127.0.0.1", "localhost", "", "::1")
HELPER = "orchestrator.backends.ssh"
PORT_MARK = "@pspnet-port "


# ---------------------------------------------------------------- hosts and connections

class HostSession:
    """The hosts of one job and one SSH connection to each (shared by preflight, launcher, lookup)."""

    def __init__(self, hosts: Sequence[Any], job_id: str, local_job_dir: str) -> None:
        self.hosts = list(hosts)
        self.by_name = {h.name: h for h in self.hosts}
        self.job_id = job_id
        self.local_job_dir = os.path.abspath(local_job_dir) if local_job_dir else ""
        self._conns: Dict[str, Any] = {}
        self._proc_conns: Dict[str, List[List[Any]]] = {}   # host -> [[connection, live processes], ...]
        self._lock = threading.Lock()
        self.preflight = None

    @property
    def master(self):
        return self.hosts[0]

    def conn(self, name: str):
        from cluster import ssh
        with self._lock:
            c = self._conns.get(name)
            if c is None:
                c = self._conns[name] = ssh.connect(self.by_name[name])
            return c

    def conns(self) -> Dict[str, Any]:
        return {h.name: self.conn(h.name) for h in self.hosts}

    def process_conn(self, name: str):
        """A connection for one more long-running process on host ``name``.

        sshd allows ``MaxSessions`` (default 10) channels per connection, and a server with 8 or 16
        devices runs that many ranks plus the scheduler: each connection carries at most
        ``PROCESSES_PER_CONNECTION`` processes, more connections are opened as needed.  Call
        ``release(name, conn)`` when the process ends.
        """
        from cluster import ssh
        with self._lock:
            slots = self._proc_conns.setdefault(name, [])
            for slot in slots:
                if slot[1] < PROCESSES_PER_CONNECTION and slot[0].is_connected:
                    slot[1] += 1
                    return slot[0]
            if not slots and name in self._conns:   # reuse the preflight's connection first
                conn = self._conns[name]
            else:
                conn = ssh.connect(self.by_name[name])
            slots.append([conn, 1])
            return conn

    def mark_full(self, name: str, conn: Any) -> None:
        """The server refused another channel on ``conn``: use other connections from now on."""
        with self._lock:
            for slot in self._proc_conns.get(name, []):
                if slot[0] is conn:
                    slot[1] = max(slot[1] - 1, 0) + PROCESSES_PER_CONNECTION * 1000
                    return

    def release(self, name: str, conn: Any) -> None:
        with self._lock:
            for slot in self._proc_conns.get(name, []):
                if slot[0] is conn and slot[1] > 0:
                    slot[1] -= 1
                    return

    def remote_job_dir(self, host: Any) -> str:
        return posixpath.join(host.remote_job_root(), self.job_id)

    def close(self) -> None:
        with self._lock:
            conns = list(self._conns.values()) + [slot[0] for slots in self._proc_conns.values() for slot in slots]
            for c in conns:
                try:
                    c.close()
                except Exception:  # noqa: BLE001
                    pass
            self._conns.clear()
            self._proc_conns.clear()


def load_hosts(spec: Any) -> List[Any]:
    """The job's hosts: ``spec.hosts`` is a hostfile (relative to the launch directory) or ``a,b,c``."""
    from cluster.hosts import resolve_hosts
    value = str(spec.hosts)
    cwd = getattr(spec, "cwd", "") or os.getcwd()
    path = os.path.expanduser(value)
    if not os.path.isabs(path) and os.path.exists(os.path.join(cwd, path)):
        value = os.path.join(cwd, path)
    return resolve_hosts(value)


# ---------------------------------------------------------------- remote workers

class RemoteWorker:
    """A ``WorkerHandle`` for a process on another host (see orchestrator/workers.py)."""

    def __init__(self, spec: Any, host: Any, proc: Any, sink: Any) -> None:
        self.spec = spec
        self.host = host
        self.proc = proc
        self.sink = sink
        self.started = time.time()

    @property
    def pid(self) -> Optional[int]:
        """The remote pid (known once the wrapper reported it, a few ms after start)."""
        return self.proc.remote_pid

    @property
    def reason(self) -> Optional[str]:
        return self.proc.reason

    def poll(self) -> Optional[int]:
        return self.proc.poll()

    def terminate(self) -> None:
        self.proc.terminate()

    def kill(self) -> None:
        self.proc.kill()

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        return self.proc.wait(timeout)

    def wait_fd(self) -> Optional[int]:
        return self.proc.wait_fd()

    def join_output(self, timeout: Optional[float] = None) -> None:
        self.proc.join_output(timeout)

    def close(self) -> None:
        self.proc.close()

    def __repr__(self) -> str:
        return f"RemoteWorker({self.spec.name} on {self.host.name}, pid={self.pid}, rc={self.proc.exit_code})"



class SSHBackend(Backend):
    """Ranks on the hosts of ``spec.hosts`` (a hostfile or ``a,b,c``), over SSH; see the module doc."""

    name = "ssh"

    def __init__(self, spec: "JobSpec", log: Optional[Callable[[str], None]] = None) -> None:
        super().__init__(spec, log)
        self._session: Optional[HostSession] = None
        self._host_ranks: Dict[str, List[int]] = {}
        self._prepared = False
        self.prepare_seconds: Optional[float] = None

    # ------------------------------------------------------------ hosts
    @property
    def session(self) -> HostSession:
        """The job's hosts and connections (the hostfile is read on first use; connections open lazily)."""
        if self._session is None:
            from cluster.errors import ClusterInputError
            from orchestrator.plan import PlanError
            if not self.spec.hosts:
                raise PlanError("--launcher ssh: needs --hosts FILE (a hostfile) or --hosts a,b,c")
            try:
                hosts = load_hosts(self.spec)
            except ClusterInputError as exc:
                raise PlanError(str(exc)) from None
            self._session = HostSession(hosts, self.spec.job_id, self.spec.job_dir)
        return self._session

    def _host(self, name: str) -> Any:
        from orchestrator.workers import LaunchError
        host = self.session.by_name.get(name)
        if host is None:
            raise LaunchError(f"host {name!r} is not in the hostfile ({', '.join(self.session.by_name)})")
        return host

    def discover(self) -> List["Server"]:
        from cluster.preflight import run_preflight
        from orchestrator.plan import PlanError
        session = self.session
        result = run_preflight(session.hosts, session.conns(), backend=self.spec.backend,
                               devices=self.spec.devices, port=self.spec.sched_port)
        session.preflight = result
        if not result.ok:
            self.close()
            raise PlanError(result.summary())
        servers = result.servers
        if len(servers) != len(session.hosts):   # pragma: no cover - a report without problems has a server
            raise PlanError("preflight: a host reported no devices")
        rank = 0
        self._host_ranks = {}
        for srv in servers:
            n = len(srv.devices)
            self._host_ranks[srv.host or srv.server_id] = list(range(rank, rank + n))
            rank += n
        return servers

    # ------------------------------------------------------------ how each host sees the job
    def remote_job_dir(self, host: Any) -> str:
        return self.session.remote_job_dir(host)

    def node_view(self, host: str) -> NodeView:
        h = self._host(host)
        remote = self.remote_job_dir(h)
        config = posixpath.join(remote, CONFIG_COPY) if self.spec.uses_trainer else None
        return NodeView(job_dir=remote, python=h.python, config=config, env=dict(h.env))

    def rendezvous(self, plan: "JobPlan", attempt: int) -> Tuple[str, int]:
        """The first host's address (unless ``--sched-host`` names a reachable one) and a port free there."""
        from cluster import ssh
        from cluster.proc import free_port
        master = self.session.master
        address = master.address if self.spec.sched_host in LOOPBACK else self.spec.sched_host
        if self.spec.sched_port is not None:
            return address, int(self.spec.sched_port)
        argv = [master.python, "-m", HELPER, "free-port"]
        res = ssh.run(self.session.conn(master.name), ssh.remote_command(argv, master.env, master.workdir),
                      host=master.name)
        for line in reversed(res.stdout.splitlines()):
            if line.startswith(PORT_MARK) and line[len(PORT_MARK):].strip().isdigit():
                return address, int(line[len(PORT_MARK):])
        self.log(f"warning: no free port reported by {master.name} ({res.reason()}); trying one free here")
        return address, free_port()

    # ------------------------------------------------------------ files on every host
    def prepare(self, plan: "JobPlan") -> None:
        """Make the job dir on every host and copy the rank table and resolved config there (in parallel)."""
        from cluster import ssh
        from cluster.contracts.jobdir import atomic_write_bytes, atomic_write_json
        from orchestrator.workers import LaunchError

        if self._prepared:
            return
        t0 = time.monotonic()
        s = self.session
        self._host_ranks = {}
        for p in plan.placements:
            self._host_ranks.setdefault(p.host, []).append(p.rank)
        write_local_files(plan)
        files: Dict[str, bytes] = {}
        atomic_write_json(os.path.join(s.local_job_dir, HOSTS_JSON),
                          {"hosts": [h.to_dict() for h in s.hosts],
                           "remote_job_dirs": {h.name: s.remote_job_dir(h) for h in s.hosts}})
        rt = os.path.join(s.local_job_dir, "rank_table.json")
        if plan.rank_table is not None and os.path.exists(rt):
            with open(rt, "rb") as fh:
                files["rank_table.json"] = fh.read()
        if self.spec.uses_trainer and plan.config is not None:
            import yaml
            # keys with a leading underscore are the loader's notes (``_path``), not config values
            config = {k: v for k, v in plan.config.items() if not str(k).startswith("_")}
            text = "# resolved trainer config, copied by pspnet-cluster to every host\n" + \
                yaml.safe_dump(config, sort_keys=False)
            files[CONFIG_COPY] = text.encode()
            atomic_write_bytes(os.path.join(s.local_job_dir, CONFIG_COPY), files[CONFIG_COPY])

        def one(host) -> Optional[str]:
            conn = s.conn(host.name)
            remote = s.remote_job_dir(host)
            made = ssh.run(conn, f"mkdir -p -- {shlex.quote(remote)}", host=host.name)
            if not made.ok:
                return f"{host.name}: cannot make the job dir {remote}: {made.reason()}"
            try:
                for name, data in files.items():
                    ssh.put_bytes(conn, posixpath.join(remote, name), data, host=host.name)
            except ssh.SSHError as exc:
                return str(exc)
            finally:
                ssh.close_sftp(conn)   # its channel would count against the host's MaxSessions
            return None

        problems = [p for p in ssh.run_parallel(s.hosts, one) if p]
        if problems:
            raise LaunchError("could not prepare the hosts:\n  " + "\n  ".join(problems))
        self._prepared = True
        self.prepare_seconds = time.monotonic() - t0

    # ------------------------------------------------------------ processes
    def describe(self, plan: "JobPlan", workers: Sequence["WorkerSpec"]) -> List[str]:
        lines = ["over SSH, each process runs on its host as:"]
        for w in workers:
            lines.append(f"  {w.name} on {w.host}: {self.command_for(w)}")
        return lines

    def command_for(self, worker: "WorkerSpec") -> str:
        """The shell line that runs ``worker`` on its host, under the process-group wrapper."""
        from cluster import ssh
        host = self._host(worker.host)
        env = {str(k): str(v) for k, v in worker.env.items()}
        env["PYTHONUNBUFFERED"] = "1"
        return ssh.wrapped_command(host.python, list(worker.argv), env, host.workdir, grace=self.spec.grace,
                                   affinity=worker.cpu_affinity)

    def start(self, worker: "WorkerSpec", sink: "LineSink") -> RemoteWorker:
        from cluster import ssh
        from orchestrator.workers import LaunchError

        try:
            host = self._host(worker.host)
        except LaunchError as exc:
            raise LaunchError(f"{worker.name}: {exc}") from None
        command = self.command_for(worker)
        for _ in range(8):   # a refused channel (MaxSessions) moves the process to another connection
            conn = self.session.process_conn(host.name)

            def on_exit(proc, conn=conn) -> None:
                self.session.release(host.name, conn)
                try:
                    sink.close()
                except Exception:  # noqa: BLE001
                    pass

            try:
                proc = ssh.RemoteProcess(conn, command, sink.line, label=host.name, on_exit=on_exit)
            except ssh.ChannelRefused:
                self.session.mark_full(host.name, conn)
                continue
            except ssh.SSHError as exc:
                self.session.release(host.name, conn)
                raise LaunchError(f"{worker.name} on {host.name}: {exc}") from None
            return RemoteWorker(worker, host, proc, sink)
        raise LaunchError(f"{worker.name} on {host.name}: the server refused new SSH sessions on every connection")

    # ------------------------------------------------------------ checkpoints, leftovers
    def checkpoints(self, ranks: Sequence[int]) -> Optional["ResumePoint"]:
        return newest_common_on_hosts(self.session, self._host_ranks, ranks, self.log)

    def _end_tagged(self) -> List[Tuple[str, List[int]]]:
        """Each host ends its processes carrying the job's tag (its view of the job dir); (host, pids)."""
        from cluster import ssh
        s = self.session

        def one(h) -> Tuple[str, Any]:
            argv = [h.python, "-m", HELPER, "leftovers", "--job-id", self.spec.job_id,
                    "--job-dir", s.remote_job_dir(h)]
            res = ssh.run(s.conn(h.name), ssh.remote_command(argv, h.env, h.workdir), host=h.name)
            for line in reversed(res.stdout.splitlines()):
                if line.startswith(LEFT_MARK):
                    return h.name, list(json.loads(line[len(LEFT_MARK):]).get("ended") or [])
            return h.name, f"cannot look for leftover processes ({res.reason()})"

        return ssh.run_parallel(s.hosts, one)

    def _tagged_lines(self, what: str) -> List[str]:
        lines = []
        for host, ended in self._end_tagged():
            if isinstance(ended, str):
                lines.append(f"{host}: {ended}")
            elif ended:
                lines.append(f"{host}: ended {len(ended)} {what}: {', '.join(map(str, ended))}")
        return lines

    def stop_leftovers(self, job: "JobState") -> List[str]:
        return self._tagged_lines("leftover process(es) of the job")

    def end_strays(self, job: "JobState") -> List[str]:
        return self._tagged_lines("process(es) of this job left by its previous launcher")

    def close(self) -> None:
        if self._session is not None:
            self._session.close()


# ---------------------------------------------------------------- checkpoints on the hosts

def list_host_checkpoints(session: HostSession, host: Any, ranks: Sequence[int],
                          verify_step: Optional[int] = None) -> Dict[str, Any]:
    """Ask one host for its ranks' checkpoints (``{"ranks": {r: [info...]}}``) or ``{"error": ...}``."""
    from cluster import ssh
    argv = [host.python, "-m", HELPER, "checkpoints", "--job-dir",
            session.remote_job_dir(host), "--ranks", ",".join(str(r) for r in ranks)]
    if verify_step is not None:
        argv += ["--verify", str(int(verify_step))]
    res = ssh.run(session.conn(host.name), ssh.remote_command(argv, host.env, host.workdir), host=host.name)
    for line in reversed(res.stdout.splitlines()):
        if line.startswith(CKPT_MARK):
            try:
                return json.loads(line[len(CKPT_MARK):])
            except ValueError:
                break
    return {"error": f"{host.name}: cannot list checkpoints ({res.reason()})"}


def newest_common_on_hosts(session: HostSession, host_ranks: Mapping[str, Sequence[int]],
                           ranks: Sequence[int], log: Optional[Callable[[str], None]] = None):
    """The newest step every rank holds intact, asking each host about its ranks (paths as it sees them)."""
    from cluster import ssh
    from orchestrator.restart_policy import ResumePoint

    ranks = [int(r) for r in ranks]
    hosts = [session.by_name[n] for n in host_ranks if n in session.by_name]
    answers = ssh.run_parallel(hosts, lambda h: list_host_checkpoints(session, h, host_ranks[h.name]))
    per_rank: Dict[int, Dict[int, Dict[str, Any]]] = {}
    for a in answers:
        if "error" in a:
            if log:
                log(f"checkpoint lookup: {a['error']}")
            return None
        for r, infos in a.get("ranks", {}).items():
            per_rank[int(r)] = {int(i["global_step"]): i for i in infos}
    if any(r not in per_rank for r in ranks):
        return None
    common = set.intersection(*(set(per_rank[r]) for r in ranks)) if ranks else set()
    for step in sorted(common, reverse=True):
        chosen = {r: per_rank[r][step] for r in ranks}
        if len({c.get("config_sha") for c in chosen.values()}) != 1:
            continue
        checks = ssh.run_parallel(hosts, lambda h: list_host_checkpoints(session, h, host_ranks[h.name], step))
        intact = all("error" not in c and all(c.get("intact", {}).get(str(r)) for r in host_ranks[h.name])
                     for c, h in zip(checks, hosts))
        if not intact:
            continue
        any_info = next(iter(chosen.values()))
        return ResumePoint(epoch=int(any_info["epoch"]), global_step=step,
                           paths={r: c["path"] for r, c in chosen.items()})
    return None


def _checkpoints_main(job_dir: str, ranks: Sequence[int], verify: Optional[int]) -> Dict[str, Any]:
    from cluster.contracts.jobdir import JobPaths, list_checkpoints
    paths = JobPaths(job_dir)
    out: Dict[str, Any] = {"ranks": {}, "intact": {}}
    for r in ranks:
        infos = list_checkpoints(paths.rank_ckpt_dir(r))
        out["ranks"][str(r)] = [{"global_step": i.global_step, "epoch": i.epoch, "config_sha": i.config_sha,
                                 "path": str(i.path.resolve()), "bytes": i.bytes} for i in infos]
        if verify is not None:
            match = [i for i in infos if i.global_step == verify]
            out["intact"][str(r)] = bool(match) and match[-1].intact()
    return out


def _leftovers_main(job_id: str, job_dir: str) -> Dict[str, Any]:
    from cluster import proc
    from cluster.contracts.env import RankEnv
    return {"ended": proc.end_processes(proc.tagged_processes(RankEnv(job_id=job_id, job_dir=job_dir).to_env()))}


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog=f"python -m {HELPER}")
    sub = ap.add_subparsers(dest="cmd")
    c = sub.add_parser("checkpoints", help="this host's checkpoints of a job, as one JSON line")
    c.add_argument("--job-dir", required=True)
    c.add_argument("--ranks", required=True, help="comma-separated rank ids")
    c.add_argument("--verify", type=int, default=None, help="check the sha256 of this global step's files")
    sub.add_parser("free-port", help="a TCP port free on this host now (for the scheduler)")
    lo = sub.add_parser("leftovers", help="end this host's processes of the job; print their pids as JSON")
    lo.add_argument("--job-id", required=True)
    lo.add_argument("--job-dir", required=True, help="the job dir as this host sees it")
    args = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.cmd == "free-port":
        from cluster.proc import free_port
        sys.stdout.write(f"{PORT_MARK}{free_port('0.0.0.0')}\n")
        return 0
    if args.cmd == "leftovers":
        sys.stdout.write(LEFT_MARK + json.dumps(_leftovers_main(args.job_id, args.job_dir)) + "\n")
        return 0
    if args.cmd != "checkpoints":
        ap.print_help()
        return ExitCode.BAD_INPUT
    ranks = [int(r) for r in args.ranks.split(",") if r.strip()]
    sys.stdout.write(CKPT_MARK + json.dumps(_checkpoints_main(args.job_dir, ranks, args.verify)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
