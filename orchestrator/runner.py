"""The owner loop of a job: attempts, supervision, restarts, job.json, signals.

``JobRunner(plan, state, backend, console).run()`` returns the launcher's exit code:
0 all ranks succeeded, 1 the job failed (restarts used up), 130 stopped (SIGINT/SIGTERM/``stop``; the job
stays resumable).  Where the workers run is the ``backend``'s business (orchestrator/backends/): it
prepares the nodes, starts the workers, finds the checkpoints to resume from and measures the ranks;
the runner never asks which kind it is.  ``policy`` decides about restarts.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from cluster.contracts.env import RankEnv
from cluster.contracts.exitcodes import ExitCode
from cluster.contracts.jobdir import STOP_REQUEST_FILE, JobPaths, LauncherId
from cluster.contracts.states import AttemptState, JobState as State
from cluster.proc import signal_name
from orchestrator.capture import CaptureError, RankSink, readable_tail
from orchestrator.console import Console
from orchestrator.jobstate import JobState
from orchestrator.backends.base import Backend
from orchestrator.plan import JobPlan, attempt_workers
from orchestrator.restart_policy import RestartPolicy
from orchestrator.supervisor import AttemptResult, Failure, StopRequest, Supervisor, stop_group
from orchestrator.workers import ROLE_SCHEDULER, LaunchError, WorkerHandle, WorkerSpec

IO_HINT = "the job dir must stay writable (disk full? permissions? a file replaced by a directory?)"


class JobRunner:
    def __init__(self, plan: JobPlan, state: JobState, backend: Backend, console: Optional[Console] = None,
                 policy: Optional[RestartPolicy] = None, stop: Optional[StopRequest] = None) -> None:
        self.plan = plan
        self.spec = plan.spec
        self.state = state
        self.backend = backend
        self.console = console or Console("quiet")
        self.listener = self.console.listener        # what every sink forwards its lines to
        self.policy = policy or RestartPolicy(self.spec.max_restarts,
                                              lambda _job_dir, ranks: backend.checkpoints(list(ranks)))
        self.stop = stop or StopRequest()
        self.paths = JobPaths(self.spec.job_dir).make()
        self.live: Dict[str, WorkerHandle] = {}
        self.results: List[AttemptResult] = []

    # ------------------------------------------------------------ signals
    def _install_signals(self) -> Callable[[], None]:
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum: int, _frame: Any) -> None:
            reason = signal.Signals(signum).name
            if (Path(self.spec.job_dir) / STOP_REQUEST_FILE).exists():
                reason = "stop command"
            self.stop.request(reason)

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

        def restore() -> None:
            for s, h in old.items():
                signal.signal(s, h)
        return restore

    # ------------------------------------------------------------ metrics
    def _start_metrics(self):
        if self.spec.metrics_port is None:
            return None
        from cluster.accelerators import ACCELERATORS
        from monitoring.exporter import CachedReader, serve
        health = ACCELERATORS[self.plan.backend].health_reader()
        # fed the lines the sinks already read (no second reading of the files it is written into)
        server = serve(self.spec.job_dir, host=self.spec.metrics_host, port=self.spec.metrics_port,
                       process_stats=self.backend.stats, live=True,
                       npu_reader=CachedReader(health, ttl_s=10.0) if health else None)
        console, feed = self.console.listener, server.sink

        def listener(name: str, text: str, event: Optional[Dict[str, Any]]) -> None:
            feed(name, text, event)
            console(name, text, event)
        self.listener = listener
        self.console.info(f"metrics: {getattr(server, 'url', self.spec.metrics_port)}")
        return server

    # ------------------------------------------------------------ the loop
    def run(self, resume_first: bool = False) -> int:
        restore = self._install_signals()
        metrics = None
        try:
            try:
                (Path(self.spec.job_dir) / STOP_REQUEST_FILE).unlink()
            except OSError:
                pass
            for a in self.state.attempts:      # left "running" by a launcher that was killed
                if a.get("state") == AttemptState.RUNNING:
                    a["state"] = AttemptState.LOST
                    a["failure"] = a.get("failure") or {
                        "name": "launcher", "rank": None, "reason": "launcher", "exit_code": None, "signal": None,
                        "at": None, "message": "the launcher died while this attempt ran (killed?); its ranks "
                                               "died with it", "last_lines": []}
            self.state.set_launcher(LauncherId.current())
            metrics = self._start_metrics()
            restarts_done = 0
            streak = 0
            resume_next = resume_first
            while True:
                result = self._attempt(resume_next)
                self.results.append(result)
                if result.outcome == AttemptState.SUCCEEDED:
                    return self._end(State.SUCCEEDED, ExitCode.OK, "all ranks finished")
                if result.outcome == AttemptState.STOPPED:
                    return self._end(State.STOPPED, ExitCode.STOPPED,
                                     f"stopped ({result.stop_reason}); `pspnet-cluster resume {self.spec.job_dir}` "
                                     "continues from the newest common checkpoint")
                last = self.state.last_attempt or {}
                ran_s = max(0.0, float(last.get("end") or 0) - float(last.get("start") or 0))
                decision = self.policy.decide(result, restarts_done, ran_s=ran_s, streak=streak)
                if not decision.restart:
                    f = result.failure
                    return self._end(State.FAILED, ExitCode.FAILED, f"{f.message if f else 'failed'}; {decision.reason}")
                restarts_done += 1
                streak = decision.streak
                resume_next = True
                self.state.data["backoff"] = {"delay_s": decision.delay_s, "until": time.time() + decision.delay_s,
                                              "restart": restarts_done, "of": self.policy.max_restarts}
                self.state.set_state(State.RESTARTING)
                self.console.info(f"restarting the group in {decision.delay_s:g} s ({decision.reason}; "
                                  "the wait doubles with every quick failure)")
                self.stop.wait(decision.delay_s)
                self.state.data["backoff"] = None
                if self.stop.is_set():
                    return self._end(State.STOPPED, ExitCode.STOPPED, f"stopped ({self.stop.reason}) while restarting")
        except OSError as exc:
            # the job dir cannot be written (job.json, the rank table, ...): the job fails, cleanly
            return self._fail_on_io(exc)
        except BaseException:
            if self.live:
                stop_group(self.live, 0.0)
                self.backend.end_attempt(self.live)
            try:
                self.state.end(State.FAILED, ExitCode.FAILED, "the launcher itself failed; see its output")
            except OSError:
                pass
            raise
        finally:
            restore()
            if metrics is not None:
                try:
                    metrics.close()
                except Exception:  # noqa: BLE001
                    pass

    def _launch_failure(self, attempt: int, exc: Exception, record: Optional[Dict[str, Any]]) -> AttemptResult:
        io = isinstance(exc, CaptureError)
        failure = Failure(name="launcher", rank=None, reason="io" if io else "launch", exit_code=None, signal=None,
                          at=time.time(), message=f"{exc}; {IO_HINT}" if io else str(exc))
        result = AttemptResult(AttemptState.FAILED, {}, failure=failure)
        if record is None:
            record = self.state.begin_attempt({"attempt": attempt, "mode": self.plan.mode, "rendezvous": None,
                                               "resume": None, "ranks": {}})
        self._record(record, result)
        self._report(attempt, result)
        return result

    def _attempt(self, resume_first: bool) -> AttemptResult:
        attempt = self.state.next_attempt_number()
        try:
            # the nodes first: a lookup on remote nodes needs their job dirs, and a rendezvous their address
            self.backend.prepare(self.plan)
            resume = self.policy.resume_point(self.spec.job_dir, self.plan.ranks) if resume_first else None
            rendezvous = self.backend.rendezvous(self.plan, attempt) if self.plan.mode == "dynamic" else None
        except LaunchError as exc:
            return self._launch_failure(attempt, exc, None)
        specs = attempt_workers(self.plan, attempt, rendezvous, resume=resume.paths if resume else None,
                                node_view=self.backend.node_view)
        header = f"=== pspnet-cluster: job {self.spec.job_id} attempt {attempt} " \
                 f"({time.strftime('%Y-%m-%d %H:%M:%S')})" + \
                 (f", resuming from global step {resume.global_step}" if resume else "") + " ==="
        rendezvous = None
        if self.plan.mode == "dynamic":
            env = RankEnv.from_env(specs[0].env)
            rendezvous = {"host": env.sched_host, "port": env.sched_port}
        record = self.state.begin_attempt({
            "attempt": attempt, "mode": self.plan.mode, "rendezvous": rendezvous,
            "resume": resume.to_dict() if resume else None,
            "ranks": {_key(s): {"pid": None, "device": s.device, "host": s.host, "exit_code": None,
                                "signal": None} for s in specs}})
        self.state.set_state(State.RUNNING)
        if resume:
            self.console.info(f"attempt {attempt}: resuming from global step {resume.global_step} "
                              f"(epoch {resume.epoch})")
        elif attempt > 0:
            self.console.info(f"attempt {attempt}: no checkpoint every rank holds intact; starting from scratch")
        sinks: Dict[str, RankSink] = {}
        try:
            for s in specs:
                is_rank = s.role != ROLE_SCHEDULER
                sinks[s.name] = RankSink(
                    s.name, self.paths.rank_log(s.rank) if is_rank else self.paths.scheduler_log,
                    self.paths.rank_events(s.rank) if is_rank else None,
                    listener=self.listener, header=header)
            self.live = self.backend.start_all(specs, sinks)
        except (LaunchError, CaptureError) as exc:
            for sink in sinks.values():
                sink.close()
            return self._launch_failure(attempt, exc, record)
        for name, h in self.live.items():
            record["ranks"][_key(h.spec)]["pid"] = h.pid
        self.state.save()
        self.console.start(self.live)
        self.console.info(f"attempt {attempt}: started {len(self.live)} process(es) "
                          f"({self.plan.world_size} rank(s), {self.plan.mode}); logs in {self.paths.logs_dir}")
        sup = Supervisor(self.live, sinks, hang_timeout=self.spec.hang_timeout,
                         startup_timeout=self.spec.startup_timeout, grace=self.spec.grace,
                         failure_grace=self.spec.failure_grace, stop=self.stop)
        result = sup.run()
        self.backend.end_attempt(self.live)
        for h in self.live.values():
            h.join_output(2.0)
            close = getattr(h, "close", None)
            if close:
                close()
        self.console.finish()
        self.live = {}
        self._record(record, result)
        self._report(attempt, result)
        return result

    def _fail_on_io(self, exc: OSError) -> int:
        if self.live:
            stop_group(self.live, 0.0)
            self.backend.end_attempt(self.live)
            self.live = {}
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        message = f"cannot write{where}: {exc.strerror or exc}; {IO_HINT}"
        result = AttemptResult(AttemptState.FAILED, {}, failure=Failure(
            name="launcher", rank=None, reason="io", exit_code=None, signal=None, at=time.time(), message=message))
        self.console.info(format_failure(self.spec.job_dir, self.state.next_attempt_number() - 1, result))
        try:
            self.state.end(State.FAILED, ExitCode.FAILED, message)
        except OSError as again:
            self.console.info(f"warning: job.json could not be updated either ({again.strerror or again})")
        self.console.info(f"job {self.spec.job_id} FAILED: {message}")
        return ExitCode.FAILED

    def _record(self, record: Dict[str, Any], result: AttemptResult) -> None:
        record["end"] = time.time()
        record["state"] = result.outcome
        for name, code in result.exit_codes.items():
            key = "scheduler" if name == ROLE_SCHEDULER else name.split("_", 1)[1]
            if key in record["ranks"]:
                record["ranks"][key]["exit_code"] = code
                record["ranks"][key]["signal"] = signal_name(code)
        record["failure"] = result.failure.to_dict() if result.failure else None
        record["stop_reason"] = result.stop_reason
        record["group_down_s"] = round(result.group_down_s, 4) if result.group_down_s is not None else None
        self.state.save()

    def _report(self, attempt: int, result: AttemptResult) -> None:
        if result.outcome == AttemptState.SUCCEEDED:
            return
        if result.outcome == AttemptState.STOPPED:
            self.console.info(f"attempt {attempt} stopped ({result.stop_reason}); all processes down"
                              + (f" in {result.group_down_s:.2f} s" if result.group_down_s is not None else ""))
            return
        self.console.info(format_failure(self.spec.job_dir, attempt, result))

    def _end(self, state: State, code: int, message: str) -> int:
        self.state.end(state, code, message)
        self.console.info(f"job {self.spec.job_id} {state.upper()}: {message}")
        self._write_report()
        return code

    def _write_report(self) -> None:
        """The end-of-job summary and plots, made by a detached ``pspnet-cluster report`` process.

        Plotting takes 0.5-1.5 s and a scheduler above us (Slurm, a CI system) waits for the
        launcher's exit, so the launcher does not wait for the plots.  The report process is not
        tagged as the job's (its environment is the launcher's), so no cleanup ends it, and a report
        that cannot be made never changes the job's outcome: its errors go to report/report.log.
        """
        if not getattr(self.spec, "report", True) or not self.paths.events_dir.is_dir():
            return
        root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        try:
            self.paths.report_dir.mkdir(parents=True, exist_ok=True)
            with open(self.paths.report_dir / "report.log", "ab") as log:
                subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "report", str(self.spec.job_dir)],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=env,
                                 cwd=root, start_new_session=True, close_fds=True)
        except OSError as exc:
            self.console.info(f"warning: no report written ({exc.strerror or exc})")
            return
        self.console.info(f"report: {self.paths.report_dir / 'summary.md'} (being written in the background)")


def _key(spec: WorkerSpec) -> str:
    return "scheduler" if spec.role == ROLE_SCHEDULER else str(spec.rank)


def format_failure(job_dir: str, attempt: int, result: AttemptResult) -> str:
    """The one readable block printed when an attempt fails."""
    f = result.failure
    lines = [f"---- attempt {attempt} FAILED " + "-" * 40]
    if f is None:
        lines.append("failed (no details)")
    else:
        when = time.strftime("%H:%M:%S", time.localtime(f.at))
        lines.append(f"first failure: {f.message} (seen at {when})")
        if result.group_down_s is not None:
            lines.append(f"whole group down {result.group_down_s:.3f} s later "
                         "(SIGTERM to every process group, SIGKILL after the grace period)")
        others = {n: c for n, c in result.exit_codes.items() if n != f.name}
        if others:
            lines.append("others: " + ", ".join(f"{n} {_short(c)}" for n, c in sorted(others.items())))
        if f.last_seen:
            lines.append("last seen: " + "; ".join(f.last_seen))
        if f.last_lines:
            shown = readable_tail(f.last_lines, 10)
            lines.append(f"last lines of {f.name}" + (" (MindSpore [INFO]/[WARNING] lines left out)"
                                                      if len(shown) < min(10, len(f.last_lines)) else "") + ":")
            lines.extend(f"  | {l if len(l) <= 300 else l[:297] + '...'}" for l in shown)
        if f.rank is not None:
            lines.append(f"full log: {Path(job_dir) / 'logs' / f'{f.name}.log'}")
    lines.append("-" * 60)
    return "\n".join(lines)


def _short(code: Optional[int]) -> str:
    if code is None:
        return "?"
    if code < 0:
        return signal_name(code) or str(code)
    return f"exit {code}"
