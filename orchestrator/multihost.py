"""Multi-host jobs: ranks on other servers, started and supervised over SSH (fabric).

Plugged into the local orchestrator at three points, so supervision, restarts, the job dir and
monitoring stay the same for local and remote ranks:

``resolve_servers(spec, backend)`` (called by orchestrator/plan.py for ``launch --hosts``)
    Reads the hostfile (cluster/hosts.py), opens one SSH connection per host and runs the preflight on
    every host in parallel (cluster/preflight.py): all-or-nothing, one line per failing host, nothing
    started anywhere when one fails.  Returns one ``Server`` per host (``server.host`` = the host's name)
    in hostfile order, so ranks are numbered by server, then device, and a rank table is merged from them.
``RemoteLauncher`` (a ``WorkerLauncher``; picked by the runner when the spec has hosts)
    Before the first process starts, makes the job dir on every host and copies the rank table and the
    resolved trainer config there (SFTP, atomic).  Each ``WorkerSpec`` then runs on its host under the
    process-group wrapper of cluster/ssh.py, with its environment and shell-quoted argv, local job-dir
    paths mapped to the host's job dir, ``python`` mapped to the host's interpreter and the dynamic
    cluster's scheduler address mapped to the first host.  Output comes back over the channel, line by
    line, into the same ``RankSink`` (logs/, events/) as a local rank's.
``remote_checkpoint_lookup(...)`` (the restart policy's checkpoint lookup)
    No shared file system: asks every host which checkpoints its ranks hold (sidecars), picks the newest
    global step every rank holds, and has each host verify the sha256 of its files of that step.

Remote helper: ``python -m orchestrator.multihost checkpoints --job-dir D --ranks 0,1 [--verify STEP]``
prints the host's checkpoints as one JSON line.  Nothing here imports fabric or MindSpore at import time.
"""
from __future__ import annotations

import json
import os
import posixpath
import shlex
import sys
import threading
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from cluster.contracts.env import RankEnv
from cluster.contracts.exitcodes import ExitCode

CKPT_MARK = "@pspnet-ckpts "
HOSTS_JSON = "hosts.json"
#: long-running processes per SSH connection (sshd's MaxSessions defaults to 10 channels per connection)
PROCESSES_PER_CONNECTION = 6
CONFIG_COPY = "config.resolved.yaml"
LOOPBACK = ("127.0.0.1", "localhost", "", "::1")

#: job dir -> the session resolve_servers opened (hosts, connections, preflight), for the launcher
_SESSIONS: Dict[str, "HostSession"] = {}
_SESSIONS_LOCK = threading.Lock()


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

    def map_text(self, host: Any, text: str) -> str:
        """A local job-dir path (or anything under it) -> the same path in the host's job dir."""
        root = self.local_job_dir
        if root and (text == root or text.startswith(root + "/")):
            return self.remote_job_dir(host) + text[len(root):]
        return text

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


def session_for(spec: Any) -> HostSession:
    """The session resolve_servers opened for this job, or a new one (resume, tests)."""
    key = os.path.abspath(spec.job_dir) if spec.job_dir else ""
    with _SESSIONS_LOCK:
        s = _SESSIONS.get(key)
        if s is None:
            s = _SESSIONS[key] = HostSession(load_hosts(spec), spec.job_id, spec.job_dir)
        return s


def forget_session(spec: Any) -> None:
    key = os.path.abspath(spec.job_dir) if spec.job_dir else ""
    with _SESSIONS_LOCK:
        s = _SESSIONS.pop(key, None)
    if s is not None:
        s.close()


def resolve_servers(spec: Any, backend: str) -> List[Any]:
    """Preflight every host (in parallel) and return their servers in hostfile order; PlanError if any fails."""
    from cluster.preflight import run_preflight
    from orchestrator.plan import PlanError

    forget_session(spec)
    session = session_for(spec)
    explicit_port = getattr(spec, "sched_port", None)
    result = run_preflight(session.hosts, session.conns(), backend=backend, devices=spec.devices,
                           port=explicit_port)
    session.preflight = result
    if not result.ok:
        forget_session(spec)
        raise PlanError(result.summary())
    servers = result.servers
    if len(servers) != len(session.hosts):   # pragma: no cover - a report without problems has a server
        raise PlanError("preflight: a host reported no devices")
    return servers


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


def _is_python(word: str) -> bool:
    return word == sys.executable or os.path.basename(word) in ("python", "python3") or \
        os.path.basename(word).startswith("python3.")


class RemoteLauncher:
    """Starts ``WorkerSpec``s on the hosts of a ``HostSession`` (``spec.host`` = a host's name)."""

    def __init__(self, session: HostSession, *, grace: float = 10.0, config: Optional[Mapping[str, Any]] = None,
                 explicit_sched_port: bool = False, rank_table_path: Optional[str] = None) -> None:
        self.session = session
        self.grace = float(grace)
        # keys with a leading underscore are the loader's notes (``_path``), not config values
        self.config = {k: v for k, v in config.items() if not str(k).startswith("_")} if config else None
        self.explicit_sched_port = explicit_sched_port
        self.rank_table_path = rank_table_path
        self._prepared = False
        self._port_map: Dict[str, str] = {}
        self.prepare_seconds: Optional[float] = None

    # -- once per job: job dirs and files on every host
    def prepare(self) -> None:
        """Make the job dir on every host and copy the rank table and resolved config there (in parallel)."""
        from cluster import ssh
        from cluster.contracts.jobdir import atomic_write_json
        from orchestrator.workers import LaunchError

        if self._prepared:
            return
        t0 = time.monotonic()
        s = self.session
        files: Dict[str, bytes] = {}
        if s.local_job_dir:
            atomic_write_json(os.path.join(s.local_job_dir, HOSTS_JSON),
                              {"hosts": [h.to_dict() for h in s.hosts],
                               "remote_job_dirs": {h.name: s.remote_job_dir(h) for h in s.hosts}})
            rt = self.rank_table_path or os.path.join(s.local_job_dir, "rank_table.json")
            if os.path.exists(rt):
                with open(rt, "rb") as fh:
                    files["rank_table.json"] = fh.read()
        if self.config is not None:
            import yaml
            text = "# resolved trainer config, copied by pspnet-cluster to every host\n" + \
                yaml.safe_dump(self.config, sort_keys=False)
            files[CONFIG_COPY] = text.encode()
            if s.local_job_dir:
                from cluster.contracts.jobdir import atomic_write_bytes
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

    # -- per process
    def _sched_port(self, original: str) -> str:
        """A port free on the master for this attempt's scheduler (the runner picked ``original`` here)."""
        if self.explicit_sched_port:
            return original
        if original in self._port_map:
            return self._port_map[original]
        from cluster import ssh
        master = self.session.master
        code = ("import socket,sys\np=int(sys.argv[1])\ns=socket.socket()\n"
                "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
                "try:\n s.bind(('0.0.0.0',p))\nexcept OSError:\n s=socket.socket(); s.bind(('0.0.0.0',0))\n"
                "print(s.getsockname()[1])")
        res = ssh.run(self.session.conn(master.name),
                      ssh.remote_command([master.python, "-c", code, original]), host=master.name)
        port = res.stdout.strip().splitlines()[-1] if res.ok and res.stdout.strip() else original
        self._port_map[original] = port
        return port

    def remote_env(self, spec: Any, host: Any) -> Dict[str, str]:
        s = self.session
        env: Dict[str, str] = dict(host.env)
        for k, v in spec.env.items():
            env[k] = s.map_text(host, str(v))
        env["PYTHONUNBUFFERED"] = "1"
        rank = RankEnv.from_env(env)
        changes: Dict[str, Any] = {}
        if rank.host is None:
            changes["host"] = host.name
        if rank.sched_host in LOOPBACK:
            changes["sched_host"] = s.master.address     # the scheduler runs on the first host
        if rank.sched_port is not None:
            changes["sched_port"] = int(self._sched_port(str(rank.sched_port)))
        env.update(rank.with_(**changes).to_env())
        return env

    def remote_argv(self, spec: Any, host: Any) -> List[str]:
        s = self.session
        argv = [s.map_text(host, str(a)) for a in spec.argv]
        if argv and _is_python(argv[0]):
            argv[0] = host.python
        if self.config is not None and "--config" in argv:
            i = argv.index("--config")
            if i + 1 < len(argv):
                argv[i + 1] = posixpath.join(s.remote_job_dir(host), CONFIG_COPY)
        return argv

    def command_for(self, spec: Any) -> str:
        from cluster import ssh
        host = self._host(spec)
        return ssh.wrapped_command(host.python, self.remote_argv(spec, host), self.remote_env(spec, host),
                                   host.workdir, grace=self.grace, affinity=spec.cpu_affinity)

    def _host(self, spec: Any):
        from orchestrator.workers import LaunchError
        host = self.session.by_name.get(spec.host)
        if host is None:
            raise LaunchError(f"{spec.name}: host {spec.host!r} is not in the hostfile "
                              f"({', '.join(self.session.by_name)})")
        return host

    def start(self, spec: Any, sink: Any) -> RemoteWorker:
        from cluster import ssh
        from orchestrator.workers import LaunchError

        self.prepare()
        host = self._host(spec)
        command = self.command_for(spec)
        label = host.name

        for _ in range(8):   # a refused channel (MaxSessions) moves the process to another connection
            conn = self.session.process_conn(host.name)

            def on_exit(proc, conn=conn) -> None:
                self.session.release(host.name, conn)
                try:
                    sink.close()
                except Exception:  # noqa: BLE001
                    pass

            try:
                proc = ssh.RemoteProcess(conn, command, sink.line, label=label, on_exit=on_exit)
            except ssh.ChannelRefused:
                self.session.mark_full(host.name, conn)
                continue
            except ssh.SSHError as exc:
                self.session.release(host.name, conn)
                raise LaunchError(f"{spec.name} on {host.name}: {exc}") from None
            return RemoteWorker(spec, host, proc, sink)
        raise LaunchError(f"{spec.name} on {host.name}: the server refused new SSH sessions on every connection")


def launcher_for(plan: Any) -> "RemoteLauncher":
    """The launcher for a planned multi-host job (uses the session its preflight opened)."""
    spec = plan.spec
    session = session_for(spec)
    return RemoteLauncher(session, grace=spec.grace, config=plan.config if spec.uses_trainer else None,
                          explicit_sched_port=spec.sched_port is not None)


# ---------------------------------------------------------------- checkpoints on the hosts

def _host_ranks(plan: Any) -> Dict[str, List[int]]:
    out: Dict[str, List[int]] = {}
    for p in plan.placements:
        out.setdefault(p.host, []).append(p.rank)
    return out


def list_host_checkpoints(session: HostSession, host: Any, ranks: Sequence[int],
                          verify_step: Optional[int] = None) -> Dict[str, Any]:
    """Ask one host for its ranks' checkpoints (``{"ranks": {r: [info...]}}``) or ``{"error": ...}``."""
    from cluster import ssh
    argv = [host.python, "-m", "orchestrator.multihost", "checkpoints", "--job-dir",
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


def remote_checkpoint_lookup(session: HostSession, host_ranks: Mapping[str, Sequence[int]],
                             log: Optional[Any] = None):
    """A ``CheckpointLookup`` that asks each host (restart_policy.RestartPolicy(lookup=...))."""
    from cluster import ssh
    from orchestrator.restart_policy import ResumePoint

    def lookup(job_dir: str, ranks: Iterable[int]) -> Optional[ResumePoint]:  # noqa: ARG001
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

    return lookup


def lookup_for(plan: Any, log: Optional[Any] = None):
    return remote_checkpoint_lookup(session_for(plan.spec), _host_ranks(plan), log)


def remote_launcher_and_lookup(plan: Any, log: Optional[Any] = None):
    """What the runner plugs in for a job with ``--hosts``: (launcher, checkpoint lookup)."""
    return launcher_for(plan), lookup_for(plan, log)


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


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m orchestrator.multihost")
    sub = ap.add_subparsers(dest="cmd")
    c = sub.add_parser("checkpoints", help="this host's checkpoints of a job, as one JSON line")
    c.add_argument("--job-dir", required=True)
    c.add_argument("--ranks", required=True, help="comma-separated rank ids")
    c.add_argument("--verify", type=int, default=None, help="check the sha256 of this global step's files")
    args = ap.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.cmd != "checkpoints":
        ap.print_help()
        return ExitCode.BAD_INPUT
    ranks = [int(r) for r in args.ranks.split(",") if r.strip()]
    sys.stdout.write(CKPT_MARK + json.dumps(_checkpoints_main(args.job_dir, ranks, args.verify)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
