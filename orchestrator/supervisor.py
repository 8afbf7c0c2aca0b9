"""Supervision of one attempt: watch every process, bring the whole group down on the first failure.

The owner loop (orchestrator/runner.py) starts the workers, hands their handles and sinks to a
``Supervisor`` and gets back an ``AttemptResult`` (failures are data, not exceptions).

Failure = the first rank that exits non-zero or by a signal, the scheduler doing so, or a rank that
sends no event for ``hang_timeout`` seconds (the clock starts at its first ``compiled``/``step``
event; before that it has ``startup_timeout`` for import, data preparation and graph compilation), or
a rank whose step times are steady and that sends no step for ``max(HANG_FLOOR_S, HANG_K x p95)``
seconds (a stuck collective is caught in seconds, not at the fixed timeout; validation, checkpoints
and epoch ends are allowed for through their events, see RankSink.hang_limit).
Then every process gets SIGTERM (to its whole process group), and SIGKILL after ``failure_grace``
seconds (default 0.3 s: the group is broken anyway, and ranks blocked in a collective would not act on
SIGTERM; checkpoints are written atomically, so nothing is torn).  A requested stop (signal, ``stop``)
gives ``grace`` seconds instead, so ranks can end cleanly.

Waiting is cheap and fast: the loop sleeps in ``select`` on the workers' pidfds (Linux >= 5.3), so a
death wakes it at once; without pidfds it polls every ``poll_interval`` seconds.
"""
from __future__ import annotations

import selectors
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Mapping, Optional

from cluster.contracts.states import AttemptState
from cluster.proc import describe_exit, signal_name
from orchestrator.capture import RankSink, readable_tail
from orchestrator.workers import ROLE_SCHEDULER, WorkerHandle


#: adaptive hang check: a rank with steady step times is hung after max(HANG_FLOOR_S, HANG_K x p95)
#: seconds without a step (see RankSink.hang_limit)
HANG_K = 10.0
HANG_FLOOR_S = 4.0


class StopRequest(threading.Event):
    """Set from a signal handler or the stop command: stop the attempt, keep the job resumable."""

    reason: Optional[str] = None

    def request(self, reason: str) -> None:
        if not self.is_set():
            self.reason = reason
        self.set()


@dataclass
class Failure:
    name: str                   # rank_<R> or scheduler
    rank: Optional[int]
    reason: str                 # exit | signal | hang | startup | launch | io
    exit_code: Optional[int]
    signal: Optional[str]
    at: float                   # unix time the launcher saw it
    message: str
    last_lines: List[str] = field(default_factory=list)
    last_seen: List[str] = field(default_factory=list)   # hangs: where each rank was last seen

    def to_dict(self) -> Dict[str, object]:
        return asdict(self)


@dataclass
class AttemptResult:
    outcome: AttemptState                         # succeeded | failed | stopped
    exit_codes: Dict[str, Optional[int]]
    failure: Optional[Failure] = None
    stop_reason: Optional[str] = None
    group_down_s: Optional[float] = None          # failure/stop seen -> every process gone
    detected_mono: Optional[float] = None         # time.monotonic() when the failure was seen


class Supervisor:
    def __init__(self, workers: Mapping[str, WorkerHandle], sinks: Mapping[str, RankSink], *,
                 hang_timeout: float = 0.0, startup_timeout: float = 0.0, grace: float = 10.0,
                 failure_grace: float = 0.3,
                 stop: Optional[StopRequest] = None, poll_interval: float = 0.02,
                 scheduler_linger: float = 30.0, hang_k: float = HANG_K, hang_floor: float = HANG_FLOOR_S) -> None:
        self.workers = dict(workers)
        self.sinks = dict(sinks)
        self.hang_timeout = float(hang_timeout or 0)
        self.startup_timeout = float(startup_timeout or 0)
        self.grace = float(grace)
        self.failure_grace = float(failure_grace)
        self.stop = stop or StopRequest()
        self.poll_interval = poll_interval
        self.scheduler_linger = scheduler_linger
        self.hang_k = float(hang_k)
        self.hang_floor = float(hang_floor)
        self.exit_codes: Dict[str, Optional[int]] = {n: None for n in self.workers}

    # ------------------------------------------------------------ the loop
    def run(self) -> AttemptResult:
        sel = selectors.DefaultSelector()
        fds = {}
        for name, h in self.workers.items():
            fd = h.wait_fd()
            if fd is not None:
                sel.register(fd, selectors.EVENT_READ, name)
                fds[name] = fd
        # with a pidfd for everyone, deaths wake the select at once; the timeout only paces the
        # hang and stop checks
        timeout = 0.1 if len(fds) == len(self.workers) else self.poll_interval
        ranks = [n for n, h in self.workers.items() if h.spec.role != ROLE_SCHEDULER]
        ranks_done_at: Optional[float] = None
        try:
            while True:
                if fds:
                    sel.select(timeout)
                else:
                    time.sleep(timeout)
                failure = self._reap(sel, fds)
                ranks_ok = all(self.exit_codes[n] == 0 for n in ranks)
                if failure is not None and not (failure.rank is None and ranks_ok):
                    return self._bring_down(AttemptState.FAILED, failure=failure)
                if ranks_ok:
                    # every rank done (the job's work is complete): the scheduler finishes by itself,
                    # shortly; how it ends no longer decides the outcome
                    ranks_done_at = ranks_done_at or time.monotonic()
                    running = [n for n in self.workers if self.exit_codes[n] is None]
                    if not running:
                        return AttemptResult(AttemptState.SUCCEEDED, dict(self.exit_codes))
                    if self.stop.is_set() or time.monotonic() - ranks_done_at > self.scheduler_linger:
                        return self._bring_down(AttemptState.SUCCEEDED)
                    continue
                if self.stop.is_set():
                    return self._bring_down(AttemptState.STOPPED, stop_reason=self.stop.reason or "stop")
                hang = self._check_hang() or self._check_output()
                if hang is not None:
                    return self._bring_down(AttemptState.FAILED, failure=hang)
        finally:
            sel.close()

    def _reap(self, sel: selectors.BaseSelector, fds: Dict[str, int]) -> Optional[Failure]:
        failure = None
        for name, h in self.workers.items():
            if self.exit_codes[name] is not None:
                continue
            code = h.poll()
            if code is None:
                continue
            self.exit_codes[name] = code
            if name in fds:
                sel.unregister(fds.pop(name))
            if code != 0 and failure is None:
                spec = h.spec
                who = "the scheduler" if spec.role == ROLE_SCHEDULER else f"rank {spec.rank}"
                failure = Failure(name=name, rank=None if spec.role == ROLE_SCHEDULER else spec.rank,
                                  reason="signal" if code < 0 else "exit", exit_code=code,
                                  signal=signal_name(code), at=time.time(),
                                  message=f"{who} {describe_exit(code)}")
        return failure

    def _check_hang(self) -> Optional[Failure]:
        now = time.monotonic()
        for name, h in self.workers.items():
            if h.spec.role == ROLE_SCHEDULER or self.exit_codes[name] is not None:
                continue
            sink = self.sinks.get(name)
            if sink is None:
                continue
            if sink.past_compile is None:
                waited = now - sink.created
                if self.startup_timeout and waited > self.startup_timeout:
                    return Failure(name=name, rank=h.spec.rank, reason="startup", exit_code=None, signal=None,
                                   at=time.time(),
                                   message=(f"rank {h.spec.rank} sent no compiled/step event within "
                                            f"{self.startup_timeout:g} s of starting (--startup-timeout)"))
            elif self.hang_timeout:
                quiet = now - (sink.last_event or sink.past_compile)
                if quiet > self.hang_timeout:
                    return self._hung(name, h, f"rank {h.spec.rank} sent no event for {quiet:.1f} s "
                                               f"(--hang-timeout {self.hang_timeout:g} s): hung")
                limit = sink.hang_limit(self.hang_k, self.hang_floor) if hasattr(sink, "hang_limit") else None
                if limit is not None and limit < self.hang_timeout:
                    quiet = now - sink.last_step_at
                    if quiet > limit:
                        return self._hung(name, h, (
                            f"rank {h.spec.rank} sent no step for {quiet:.1f} s, while its recent steps came "
                            f"every {sink.step_p95():.3g} s (p95); limit {limit:.3g} s = max({self.hang_floor:g} s, "
                            f"{self.hang_k:g} x p95): hung"))
        return None

    def _hung(self, name: str, h: WorkerHandle, message: str) -> Failure:
        """A hang failure that says where every rank was last seen (a stuck collective shows as ranks
        waiting at different places)."""
        now = time.monotonic()
        seen = []
        for n, other in self.workers.items():
            sink = self.sinks.get(n)
            if other.spec.role == ROLE_SCHEDULER or sink is None:
                continue
            ago = now - sink.last_event if sink.last_event is not None else None
            seen.append(f"{n}: {getattr(sink, 'last_seen', '?')}"
                        + (f", {ago:.1f} s ago" if ago is not None else ""))
        return Failure(name=name, rank=h.spec.rank, reason="hang", exit_code=None, signal=None, at=time.time(),
                       message=message, last_seen=seen)

    def _check_output(self) -> Optional[Failure]:
        """A rank whose output cannot be saved fails the attempt: its events are what the job is judged by."""
        for name, sink in self.sinks.items():
            fault = getattr(sink, "fault", None)
            if fault:
                h = self.workers.get(name)
                rank = h.spec.rank if h is not None and h.spec.role != ROLE_SCHEDULER else None
                who = f"rank {rank}" if rank is not None else name
                return Failure(name=name, rank=rank, reason="io", exit_code=None, signal=None, at=time.time(),
                               message=f"the output of {who} cannot be saved: {fault}")
        return None

    # ------------------------------------------------------------ stopping the group
    def _bring_down(self, outcome: AttemptState, failure: Optional[Failure] = None,
                    stop_reason: Optional[str] = None) -> AttemptResult:
        t0 = time.monotonic()
        stop_group(self.workers, self.failure_grace if outcome == AttemptState.FAILED else self.grace, self.exit_codes)
        down = time.monotonic() - t0
        if failure is not None:
            h = self.workers.get(failure.name)
            if h is not None:
                h.join_output(1.0)     # let its last lines land in the sink
            sink = self.sinks.get(failure.name)
            if sink is not None:
                failure.last_lines = readable_tail(sink.last_lines(), 20)
        return AttemptResult(outcome, dict(self.exit_codes), failure=failure, stop_reason=stop_reason,
                             group_down_s=down, detected_mono=t0)


def stop_group(workers: Mapping[str, WorkerHandle], grace: float,
               exit_codes: Optional[Dict[str, Optional[int]]] = None) -> Dict[str, Optional[int]]:
    """SIGTERM every process group, SIGKILL whatever is left after ``grace`` seconds; reap all."""
    codes = exit_codes if exit_codes is not None else {}
    running = {n: h for n, h in workers.items() if codes.get(n) is None and h.poll() is None}
    for n, h in workers.items():
        if n not in running and codes.get(n) is None:
            codes[n] = h.poll()
    for h in running.values():
        h.terminate()
    deadline = time.monotonic() + grace
    while running and time.monotonic() < deadline:
        for n in list(running):
            code = running[n].poll()
            if code is not None:
                codes[n] = code
                del running[n]
        if running:
            time.sleep(0.005)
    for h in running.values():
        h.kill()
    for n, h in running.items():
        codes[n] = h.wait(5.0)
    for h in workers.values():   # helpers a worker left in its group
        h.kill()
    return codes
