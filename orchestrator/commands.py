"""Sub-commands of the orchestrator: launch, resume, stop, status, logs.

Exit codes of every command: 0 ok, 1 the job failed, 2 bad input (nothing started), 130 stopped or
interrupted (the job stays resumable).  Heavy imports stay inside the handlers: ``--help`` is fast.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Deque, Dict, Iterable, List

from cluster.accelerators import BACKEND_CHOICES
from cluster.contracts.exitcodes import HELP as EXIT_CODES, ExitCode
from cluster.contracts.jobjson import JobJsonError
from cluster.contracts.states import JobState as State


LAUNCH_EPILOG = """\
examples:
  pspnet-cluster launch --devices 2                      # smoke config on generated data, CPU dynamic cluster
  pspnet-cluster launch --devices 0-7 --config voc2012 --max-restarts 2 -- data_root=/data/VOC2012
  pspnet-cluster launch --devices 4 --dry-run            # print the plan (env, rank table, binding)
  pspnet-cluster launch --devices 2 --stream --ranks 0   # rank 0's log lines on the console
  pspnet-cluster launch --devices 2 --cmd 'python my_train.py --lr 0.1'   # any MindSpore program
  pspnet-cluster launch --devices 8 --backend ascend --mode ranktable --hccn-conf /etc/hccn.conf
  pspnet-cluster launch --hosts hosts.yaml --devices 8   # ranks on every host of the hostfile, over SSH
  pspnet-cluster launch --launcher local --devices 2     # on this machine even inside a Slurm allocation

The job lives in runs/<job-id>/ (job.json, logs/, events/, ckpt/, rank_table.json).

""" + EXIT_CODES


def add_commands(sub: Any) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("launch", help="start a supervised multi-rank training job",
                       description="Start N supervised ranks (a MindSpore dynamic cluster or an HCCL rank-table "
                                   "job), capture their logs and events into the job dir, bring the whole group "
                                   "down on the first failure and restart it from the newest common checkpoint.",
                       epilog=LAUNCH_EPILOG, formatter_class=fmt)
    p.add_argument("--devices", help="device count (8) or list (0-3,6); on CPU: logical slots")
    p.add_argument("--hosts", help="hosts file for a multi-host job (see docs)")
    p.add_argument("--launcher", metavar="{local,ssh,slurm}",
                   help="where ranks run [ssh with --hosts, slurm inside a Slurm allocation, else local]")
    p.add_argument("--config", help="trainer config: name (smoke, voc2012, ade20k) or YAML path [smoke]")
    p.add_argument("--job-dir", help="job directory [runs/<job-id>]")
    p.add_argument("--job-id", help="job id [time-based]")
    p.add_argument("--spec", metavar="FILE", help="YAML job spec; command-line flags win over it")
    p.add_argument("--dry-run", action="store_true", help="print the plan and start nothing")
    p.add_argument("--max-restarts", type=int, help="restart the group up to K times after a failure [0]")
    p.add_argument("--hang-timeout", type=float,
                   help="a rank that sends no event for S seconds after compiling is hung (0: off) [900]")
    p.add_argument("--startup-timeout", type=float,
                   help="seconds a rank may take to its first compiled/step event (0: off) [1800]")
    p.add_argument("--grace", type=float,
                   help="seconds between SIGTERM and SIGKILL when the job is stopped (signal, `stop`) [10]")
    p.add_argument("--failure-grace", type=float,
                   help="seconds between SIGTERM and SIGKILL when a rank failed and the group goes down [0.3]")
    p.add_argument("--backend", choices=BACKEND_CHOICES, help="[auto: ascend if found, else cpu]")
    p.add_argument("--mode", choices=("auto", "dynamic", "ranktable"),
                   help="[auto: ranktable on ascend, dynamic otherwise]")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    p.add_argument("--metrics-host", help="address the metrics endpoint binds [127.0.0.1]")
    p.add_argument("--sched-port", type=int, help="dynamic-cluster scheduler port [a free port per attempt]")
    p.add_argument("--sched-host", help="dynamic-cluster scheduler address [127.0.0.1]")
    p.add_argument("--cmd", help="run this program instead of the PSPNet trainer, e.g. 'python x.py ARGS'")
    b = p.add_mutually_exclusive_group()
    b.add_argument("--bind-cores", dest="bind_cores", action="store_true", default=None,
                   help="pin each local rank to its share of the CPU cores [on for ascend]")
    b.add_argument("--no-bind-cores", dest="bind_cores", action="store_false")
    p.add_argument("--hccn-conf", help="hccn.conf to read instead of /etc/hccn.conf")
    p.add_argument("--npu-smi", help="saved `npu-smi info` output to read instead of running it")
    p.add_argument("--rank-table-format", choices=("1.0", "1.2"), help="HCCL rank table format [1.0]")
    # the rank-table inputs `pspnet-cluster ranktable` takes, under the same names
    p.add_argument("--rules", dest="rank_table_rules", choices=("auto", "910", "a3", "none"),
                   help="rank-table card rules [auto: a3 when npu-smi shows two chips per NPU, else 910 for "
                        "1.0 and a3 for 1.2]")
    p.add_argument("--ips", help="explicit device IPs: 0=IP,1=IP,... or IP,IP,... for 0,1,...")
    p.add_argument("--server-id", help="rank table server_id [this host's IP]")
    p.add_argument("--host-ip", help="format 1.2: the server's host_ip")
    p.add_argument("--super-pod-id", help="format 1.2 super-pod mode: super_pod_id")
    p.add_argument("--super-device-ids", help="format 1.2 super-pod mode: 0=SDID,1=SDID,... or SDID,SDID,...")
    p.add_argument("--no-hccn-tool", dest="hccn_tool", action="store_false", default=None,
                   help="never run hccn_tool for device IPs")
    p.add_argument("--no-report", dest="report", action="store_false", default=None,
                   help="do not write report/summary.md and its plots when the job ends")
    _view_flags(p)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="after --: trainer config overrides (with --cmd: extra program arguments)")
    p.set_defaults(func=cmd_launch)

    r = sub.add_parser("resume", help="continue a stopped or failed job from its newest common checkpoint",
                       description="Start a new attempt of the job in JOB_DIR with the same spec, every rank "
                                   "resuming from the newest checkpoint all ranks hold intact.",
                       epilog="example:\n  pspnet-cluster resume runs/20261126-101500-1234\n\n" + EXIT_CODES,
                       formatter_class=fmt)
    r.add_argument("job_dir", metavar="JOB_DIR")
    r.add_argument("--max-restarts", type=int, help="override the job's --max-restarts")
    _view_flags(r)
    r.set_defaults(func=cmd_resume)

    s = sub.add_parser("stop", help="stop a running job (graceful, then forced)",
                       description="Ask the job's launcher to stop (SIGTERM: ranks get SIGTERM, then SIGKILL "
                                   "after the grace period); if it does not exit in time, kill it and any rank left.",
                       epilog="example:\n  pspnet-cluster stop runs/20261126-101500-1234\n", formatter_class=fmt)
    s.add_argument("job_dir", metavar="JOB_DIR")
    s.add_argument("--timeout", type=float, default=None,
                   help="seconds to wait for a graceful stop before forcing [job grace + 10]")
    s.set_defaults(func=cmd_stop)

    st = sub.add_parser("status", help="state of one job, or of every job under ./runs",
                        epilog="examples:\n  pspnet-cluster status\n  pspnet-cluster status runs/<job> --json\n",
                        formatter_class=fmt)
    st.add_argument("job_dir", metavar="JOB_DIR", nargs="?")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.add_argument("--runs", default="runs", help="where to look for jobs [./runs]")
    st.set_defaults(func=cmd_status)

    lg = sub.add_parser("logs", help="print (or follow) the ranks' logs of a job",
                        epilog="examples:\n  pspnet-cluster logs runs/<job> --rank 1 -n 50\n"
                               "  pspnet-cluster logs runs/<job> -f\n", formatter_class=fmt)
    lg.add_argument("job_dir", metavar="JOB_DIR")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until the job ends")
    lg.add_argument("--rank", type=int, action="append", help="only this rank (repeatable)")
    lg.add_argument("--scheduler", action="store_true", help="the scheduler's log")
    lg.add_argument("-n", "--lines", type=int, default=0, help="only the last N lines of each log")
    lg.set_defaults(func=cmd_logs)


def _view_flags(p: argparse.ArgumentParser) -> None:
    v = p.add_mutually_exclusive_group()
    v.add_argument("--stream", action="store_true", help="print every rank's log lines, prefixed [rank_R]")
    v.add_argument("--quiet", action="store_true", help="only launcher messages and the final report")
    p.add_argument("--ranks", help="show only these ranks on the console (0,1 or 0-3)")


def _err(cmd: str, msg: Any) -> int:
    print(f"pspnet-cluster {cmd}: error: {msg}", file=sys.stderr)
    return ExitCode.BAD_INPUT


def _console(args: argparse.Namespace):
    from orchestrator.console import Console
    ranks = None
    if getattr(args, "ranks", None):
        from cluster.devices import parse_visible_devices
        text = args.ranks if not args.ranks.strip().isdigit() else args.ranks + ","
        ranks = parse_visible_devices(text, None, "--ranks")
    view = "stream" if args.stream else "quiet" if args.quiet else "progress"
    return Console(view, ranks)


# ---------------------------------------------------------------- launch

def cmd_launch(args: argparse.Namespace) -> int:
    from cluster.contracts.jobdir import JobDirBusy
    from cluster.errors import ClusterInputError
    from orchestrator.jobspec import SpecError, check_job_dir_writable, resolve
    from orchestrator.backends import choose_launcher, open_backend
    from orchestrator.plan import attempt_workers, describe_plan, resolve_plan

    cli: Dict[str, Any] = {
        "devices": args.devices, "hosts": args.hosts, "launcher": args.launcher, "config": args.config, "job_dir": args.job_dir,
        "job_id": args.job_id, "max_restarts": args.max_restarts, "hang_timeout": args.hang_timeout,
        "startup_timeout": args.startup_timeout, "grace": args.grace, "failure_grace": args.failure_grace, "backend": args.backend, "mode": args.mode,
        "metrics_port": args.metrics_port, "metrics_host": args.metrics_host, "sched_port": args.sched_port,
        "sched_host": args.sched_host, "cmd": args.cmd, "bind_cores": args.bind_cores, "hccn_conf": args.hccn_conf,
        "npu_smi": args.npu_smi, "rank_table_format": args.rank_table_format, "report": args.report,
        "rank_table_rules": args.rank_table_rules, "ips": args.ips, "server_id": args.server_id,
        "host_ip": args.host_ip, "super_pod_id": args.super_pod_id, "super_device_ids": args.super_device_ids,
        "hccn_tool": args.hccn_tool,
        "overrides": list(args.overrides) if args.overrides else None,
    }
    try:
        console = _console(args)
        if args.devices is None and not args.spec:
            raise SpecError("--devices is required (a count like 2, or a list like 0-3)")
        spec = resolve(cli, args.spec)
        spec.launcher = choose_launcher(spec.launcher, spec.hosts)
        backend = open_backend(spec, console.info)
    except (SpecError, ClusterInputError) as exc:
        return _err("launch", exc)
    with backend:
        try:
            plan = resolve_plan(spec, backend.discover())
            if args.dry_run:
                rendezvous = backend.rendezvous(plan, 0) if plan.mode == "dynamic" else None
                workers = attempt_workers(plan, 0, rendezvous, node_view=backend.node_view)
                print(describe_plan(plan, workers))
                for line in backend.describe(plan, workers):
                    print(line)
                print("dry run: nothing started")
                return 0
            check_job_dir_writable(spec.job_path)
            lock = _own(spec.job_path)
            check_job_dir_writable(spec.job_path)   # again under the lock: a launch that won the race owns it
        except (SpecError, ClusterInputError, JobDirBusy) as exc:
            return _err("launch", exc)
        from orchestrator.jobstate import JobState
        from orchestrator.runner import JobRunner
        with lock:
            state = JobState.new(spec.to_dict(), plan.world_size, plan.config_sha)
            state.save()
            return _run_launch(JobRunner, plan, state, backend, console)


def _run_launch(runner_cls: Any, plan: Any, state: Any, backend: Any, console: Any) -> int:
    spec = plan.spec
    console.info(f"job {spec.job_id}: {plan.world_size} rank(s), {plan.backend}/{plan.mode}, "
                 f"launcher {backend.name}; job dir {spec.job_dir}")
    import os
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if plan.backend == "cpu" and plan.world_size > cores and backend.name == "local":
        console.info(f"note: {plan.world_size} CPU ranks on {cores} core(s): they share cores and run slower")
    return runner_cls(plan, state, backend, console).run()


def _own(job_dir: Any):
    """Take the job dir's lock (``JobDirBusy`` when another launcher holds it)."""
    from cluster.contracts.jobdir import JobLock
    from orchestrator.jobspec import SpecError
    try:
        return JobLock(job_dir).acquire()
    except OSError as exc:
        raise SpecError(f"{job_dir}: cannot lock the job dir ({exc.strerror or exc})") from None


def _backend_of(state: Any):
    """The backend the job was launched with (job.json's spec), connecting nowhere yet."""
    from orchestrator.backends import open_backend
    from orchestrator.jobspec import JobSpec
    return open_backend(JobSpec.from_dict(dict(state.data.get("spec") or {}), f"{state.job_dir}/job.json"))


# ---------------------------------------------------------------- resume

def cmd_resume(args: argparse.Namespace) -> int:
    from cluster.contracts.jobdir import JobDirBusy
    from cluster.errors import ClusterInputError
    from orchestrator.jobspec import JobSpec, SpecError
    from orchestrator.backends import open_backend
    from orchestrator.jobstate import JobState
    from orchestrator.plan import resolve_plan
    from orchestrator.runner import JobRunner
    lock = None
    backend = None
    try:
        console = _console(args)
        JobState.load(args.job_dir)          # a job dir at all, before anything is written into it
        lock = _own(args.job_dir)
        state = JobState.load(args.job_dir)  # as the last owner left it
        if state.state == State.SUCCEEDED:
            lock.release()
            print(f"{args.job_dir}: the job already succeeded; nothing to resume")
            return 0
        spec = JobSpec.from_dict(dict(state.data["spec"]), f"{args.job_dir}/job.json")
        if args.max_restarts is not None:
            from orchestrator.jobspec import check_max_restarts
            spec.max_restarts = check_max_restarts(args.max_restarts)
            state.data["spec"]["max_restarts"] = spec.max_restarts
        backend = open_backend(spec, console.info)
        plan = resolve_plan(spec, backend.discover())
    except (JobJsonError, SpecError, ClusterInputError, JobDirBusy) as exc:
        if backend is not None:
            backend.close()
        if lock is not None:
            lock.release()
        return _err("resume", exc)
    with lock, backend:
        for line in backend.end_strays(state):
            console.info(line)
        console.info(f"resuming job {spec.job_id} (state was {state.state}, {len(state.attempts)} attempt(s) so far)")
        return JobRunner(plan, state, backend, console).run(resume_first=True)


# ---------------------------------------------------------------- stop

def cmd_stop(args: argparse.Namespace) -> int:
    import os
    import signal
    import time
    from pathlib import Path
    from cluster.contracts.jobdir import STOP_REQUEST_FILE, JobDirBusy, JobLock, job_running, read_launcher
    from orchestrator.jobspec import SpecError
    from orchestrator.jobstate import JobState
    try:
        state = JobState.load(args.job_dir)
    except JobJsonError as exc:
        from orchestrator.backends.slurm import cancel_submitted
        said = cancel_submitted(args.job_dir)       # queued by `submit`, not started yet
        if said is None:
            return _err("stop", exc)
        print(said)
        return 0
    spec = state.data.get("spec") if isinstance(state.data.get("spec"), dict) else {}
    grace = _finite(spec.get("grace"), 10.0)
    timeout = args.timeout if args.timeout is not None else grace + 10.0
    if job_running(args.job_dir):
        who = read_launcher(args.job_dir)
        deadline = time.monotonic() + 2.0
        while (who is None or not who.alive()) and job_running(args.job_dir) and time.monotonic() < deadline:
            time.sleep(0.05)          # a launcher that just took the lock writes its identity next
            who = read_launcher(args.job_dir)
        if who is not None and not who.is_here():
            try:
                with _backend_of(state) as backend:
                    said = backend.stop_elsewhere(state)       # e.g. Slurm: scancel the batch job
            except SpecError:
                said = []
            if not said:
                return _err("stop", f"{args.job_dir}: the job's launcher runs on {who.host} (pid {who.pid}); "
                                    "run `pspnet-cluster stop` there")
            for line in said:
                print(line)
            deadline = time.monotonic() + timeout
            while job_running(args.job_dir) and time.monotonic() < deadline:
                time.sleep(0.2)
            return 0
        if who is None or not who.alive():
            if job_running(args.job_dir):
                return _err("stop", f"{args.job_dir}: the job dir is locked but its launcher.pid names no live "
                                    "launcher of this host; nothing was signalled")
        else:
            Path(args.job_dir, STOP_REQUEST_FILE).write_text(f"{time.time()}\n")
            os.kill(who.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while job_running(args.job_dir) and time.monotonic() < deadline:
                time.sleep(0.05)
            if job_running(args.job_dir) and who.alive():
                print(f"launcher {who.pid} did not stop within {timeout:g} s; killing it (its ranks die with it)")
                os.kill(who.pid, signal.SIGKILL)
                deadline = time.monotonic() + 5.0
                while job_running(args.job_dir) and time.monotonic() < deadline:
                    time.sleep(0.02)
            else:
                print(f"job {state.data.get('job_id')} stopped")
    else:
        print(f"job {state.data.get('job_id')}: no launcher running (state {state.state})")
    try:
        with JobLock(args.job_dir).acquire(wait=0.5):   # nobody may start the job while we tidy up
            state = JobState.load(args.job_dir)
            try:
                with _backend_of(state) as backend:
                    for line in backend.stop_leftovers(state):
                        print(line)
            except SpecError as exc:
                print(f"pspnet-cluster stop: warning: leftover processes not checked: {exc}", file=sys.stderr)
            if not state.state.final:
                state.data["message"] = "stopped by `pspnet-cluster stop` (launcher gone)"
                state.data["exit_code"] = ExitCode.STOPPED
                state.set_state(State.STOPPED, save=False)
                state.set_launcher(None)
    except JobDirBusy as exc:
        print(f"note: {exc}; left it alone")
    except (OSError, JobJsonError) as exc:
        return _err("stop", f"{args.job_dir}: cannot update the job dir ({exc})")
    return 0


def _finite(value: Any, default: float) -> float:
    import math
    try:
        v = float(value)
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) and v >= 0 else default


# ---------------------------------------------------------------- status

def _last_progress(job_dir: str, world_size: int) -> Dict[str, Dict[str, Any]]:
    """Per rank: its progress as the tail of its events file tells it (the last step, the last event)."""
    from cluster.contracts.jobdir import JobPaths
    from cluster.contracts.events import parse_line
    from monitoring.progress import Progress
    paths = JobPaths(job_dir)
    out: Dict[str, Dict[str, Any]] = {}
    for r in range(world_size):
        try:
            with open(paths.rank_events(r), "rb") as fh:
                fh.seek(max(0, fh.seek(0, 2) - 65536))
                lines = fh.read().splitlines()
        except OSError:
            continue
        p = Progress(r)
        p.fold([ev for ev in map(parse_line, lines) if ev is not None])
        last: Dict[str, Any] = {}
        if p.last_event is not None:
            last = {"last_event": p.last_event, "ts": p.last_event_ts}
        if p.steps_seen:
            last.update({k: getattr(p, k) for k in ("attempt", "epoch", "step", "steps_per_epoch", "global_step",
                                                     "loss", "step_time_s")})
        out[str(r)] = last
    return out


def _job_summary(job_dir: str) -> Dict[str, Any]:
    from cluster.contracts.jobdir import job_running
    from orchestrator.jobstate import JobState
    state = JobState.load(job_dir)
    data = dict(state.data)
    alive = job_running(job_dir)
    data["launcher_alive"] = alive
    if not state.state.final and not alive:
        data["state_note"] = "launcher gone (killed?): `pspnet-cluster resume` continues the job"
    data["progress"] = _last_progress(job_dir, int(data.get("world_size") or 0))
    from orchestrator.jobspec import SpecError
    try:
        with _backend_of(state) as backend:
            data["launcher_kind"] = backend.name
            data["launcher_status"] = backend.status(state)
    except SpecError as exc:
        data["launcher_kind"] = (data.get("spec") or {}).get("launcher") or None
        data["state_note"] = data.get("state_note") or f"backend unavailable: {exc}"
    return data


def cmd_status(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path
    if args.job_dir:
        try:
            data = _job_summary(args.job_dir)
        except JobJsonError as exc:
            from orchestrator.backends.slurm import submitted_status
            data = submitted_status(args.job_dir)     # queued by `submit`, not started yet
            if data is None:
                return _err("status", exc)
        if args.json:
            print(json.dumps(data, indent=2))
        else:
            print(_format_status(data))
        return 0
    runs = Path(args.runs)
    jobs = []
    for jd in sorted(runs.glob("*/job.json")) if runs.is_dir() else []:
        try:
            jobs.append(_job_summary(str(jd.parent)))
        except JobJsonError:
            continue
    if args.json:
        print(json.dumps([{k: j.get(k) for k in ("job_id", "job_dir", "state", "world_size", "restarts",
                                                   "created", "updated", "launcher_alive", "message")}
                          for j in jobs], indent=2))
        return 0
    if not jobs:
        print(f"no jobs under {runs}/")
        return 0
    print(f"{'JOB':28s} {'STATE':11s} {'RANKS':>5s} {'ATTEMPTS':>8s}  UPDATED              NOTE")
    for j in jobs:
        import time
        upd = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.get("updated") or 0))
        note = j.get("state_note") or j.get("message") or ""
        print(f"{str(j.get('job_id')):28s} {str(j.get('state')):11s} {j.get('world_size', 0):>5} "
              f"{len(j.get('attempts') or []):>8}  {upd}  {note[:60]}")
    return 0


def _format_status(d: Dict[str, Any]) -> str:
    import time
    spec = d.get("spec", {})
    lines = [f"job {d.get('job_id')}: {str(d.get('state')).upper()}"
             + (" (launcher running)" if d.get("launcher_alive") else ""),
             f"  dir: {d.get('job_dir')}"]
    if spec:     # a job `submit` queued has no spec until its launcher starts
        lines.append(f"  ranks: {d.get('world_size')}  devices: {spec.get('devices')}  launcher: {d.get('launcher_kind')}  "
                     f"backend: {spec.get('backend')}  "
                     f"mode: {spec.get('mode')}  config: {spec.get('cmd') and ' '.join(spec['cmd']) or spec.get('config')}")
    for key, value in (d.get("launcher_status") or {}).items():
        lines.append(f"  {key}: {value}")
    if d.get("state_note"):
        lines.append(f"  note: {d['state_note']}")
    backoff = d.get("backoff") if d.get("state") == "restarting" and d.get("launcher_alive") else None
    if isinstance(backoff, dict):
        try:
            left = max(0.0, float(backoff.get("until")) - time.time())
            lines.append(f"  backoff: restart {backoff.get('restart')} of {backoff.get('of')} in {left:.1f} s "
                         f"(waiting {float(backoff.get('delay_s')):g} s after quick failures)")
        except (TypeError, ValueError):
            pass
    if d.get("message"):
        lines.append(f"  {d['message']}")
    for a in d.get("attempts") or []:
        start = time.strftime("%H:%M:%S", time.localtime(a.get("start") or 0))
        dur = f"{a['end'] - a['start']:.1f} s" if a.get("end") and a.get("start") else "running"
        res = a.get("resume")
        line = f"  attempt {a.get('attempt')}: {a.get('state')} at {start} ({dur})"
        if res:
            line += f", resumed from step {res.get('global_step')}"
        lines.append(line)
        f = a.get("failure")
        if f:
            lines.append(f"    failure: {f.get('message')}")
    prog = d.get("progress") or {}
    for r, p in sorted(prog.items(), key=lambda kv: int(kv[0])):
        if p.get("epoch") is not None:
            loss = p.get("loss")
            lines.append(f"  rank {r}: epoch {p.get('epoch')} step {p.get('step')}/{p.get('steps_per_epoch')}"
                         f" loss {loss if loss is None else round(float(loss), 4)}  last event {p.get('last_event')}")
        elif p:
            lines.append(f"  rank {r}: last event {p.get('last_event')}")
    return "\n".join(lines)


# ---------------------------------------------------------------- logs

def cmd_logs(args: argparse.Namespace) -> int:
    import collections
    import time
    from pathlib import Path
    from monitoring.tailer import Tailer
    from cluster.contracts.jobdir import JobPaths
    from cluster.contracts.jobdir import job_running
    from orchestrator.jobstate import JobState
    try:
        state = JobState.load(args.job_dir)
    except JobJsonError as exc:
        return _err("logs", exc)
    paths = JobPaths(args.job_dir)
    files: List[Path] = []
    if args.scheduler:
        files.append(paths.scheduler_log)
    ranks = args.rank if args.rank else ([] if args.scheduler else list(range(int(state.data.get("world_size") or 0))))
    for r in ranks:
        if r < 0 or r >= int(state.data.get("world_size") or 0):
            return _err("logs", f"--rank {r}: the job has ranks 0..{int(state.data.get('world_size') or 0) - 1}")
        files.append(paths.rank_log(r))
    tag = {f: f"[{f.stem}] " if len(files) > 1 else "" for f in files}
    out = sys.stdout
    tailer = Tailer()
    for f in files:
        tailer.add(f)

    def write(path: Path, lines: Iterable[bytes]) -> None:
        for line in lines:
            out.write(tag[path] + line.decode("utf-8", errors="replace") + "\n")

    first: Dict[Path, Deque[bytes]] = {f: collections.deque(maxlen=args.lines or None) for f in files}
    while True:                                  # what the logs hold now (a big log comes in pieces)
        for chunk in tailer.poll():
            first[chunk.path].extend(chunk.data[:-1].split(b"\n"))
        if tailer.last_bytes == 0:
            break
    for f in files:
        lines = list(first[f])
        if not args.follow and tailer.pending(f):         # following: it is printed once complete
            lines.append(tailer.pending(f))
        write(f, lines[-args.lines:] if args.lines else lines)
    out.flush()
    if not args.follow:
        return 0
    ending = False
    try:
        while True:
            for chunk in tailer.poll():
                write(chunk.path, chunk.data[:-1].split(b"\n"))
            out.flush()
            if tailer.last_bytes == 0:
                if ending:            # one more read after the end was seen: nothing written in between is lost
                    for f in files:
                        write(f, [tailer.pending(f)] if tailer.pending(f) else [])
                    out.flush()
                    return 0
                try:
                    st = JobState.load(args.job_dir)
                except JobJsonError:
                    return 0
                if st.state.final or not job_running(args.job_dir):
                    ending = True
                    continue
                time.sleep(0.25)
    except KeyboardInterrupt:
        return ExitCode.STOPPED
