"""The failure policy: whether a failed attempt is restarted, and from which checkpoint.

``RestartPolicy.decide(result, restarts_done)`` looks only at the ``AttemptResult`` (data), so it
does not care where the workers ran.  The checkpoint lookup is pluggable: the default looks in the
local job dir (``cluster.contracts.jobdir.newest_common_checkpoint``: the newest global step that *every* rank
holds intact, i.e. sidecar present and sha256 matching, one config_sha); the multi-host launcher
passes a lookup that asks each host.

A restart resumes every rank from its own file of that step (``PSPNET_RESUME``); with no common
checkpoint the group restarts from scratch.  Stops (signals, ``stop``), launch errors and an
unwritable job dir are never restarted.

Restarts back off exponentially, like torchrun and Kubernetes' CrashLoopBackOff: ``BACKOFF_BASE_S``
before the first restart, doubling with every quick failure in a row up to ``BACKOFF_CAP_S``; an
attempt that ran ``HEALTHY_S`` seconds or more before failing starts the count again.  A rank that
fails at once therefore costs a few restarts a minute, not hundreds.  ``decide_restart`` is a pure
function of the facts; the runner does the waiting (and shows it in job.json for ``status``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional

from cluster.contracts.states import AttemptState
from orchestrator.supervisor import AttemptResult


@dataclass(frozen=True)
class ResumePoint:
    epoch: int
    global_step: int
    paths: Dict[int, str] = field(default_factory=dict)   # rank -> its checkpoint file

    def to_dict(self) -> Dict[str, object]:
        return {"epoch": self.epoch, "global_step": self.global_step,
                "paths": {str(r): p for r, p in sorted(self.paths.items())}}


#: lookup(job_dir, ranks) -> the newest common checkpoint, or None
CheckpointLookup = Callable[[str, Iterable[int]], Optional[ResumePoint]]


def local_checkpoint_lookup(job_dir: str, ranks: Iterable[int]) -> Optional[ResumePoint]:
    from cluster.contracts.jobdir import newest_common_checkpoint
    chosen = newest_common_checkpoint(Path(job_dir), list(ranks), verify=True)
    if not chosen:
        return None
    any_info = next(iter(chosen.values()))
    return ResumePoint(epoch=any_info.epoch, global_step=any_info.global_step,
                       paths={r: str(i.path) for r, i in chosen.items()})


#: the most restarts a job may ask for
MAX_RESTARTS = 1000
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 30.0
#: an attempt that ran this long before failing was healthy: the backoff starts again from the base
HEALTHY_S = 120.0


@dataclass(frozen=True)
class RestartDecision:
    restart: bool
    reason: str
    delay_s: float = 0.0        # wait this long before the restart
    streak: int = 0             # quick failures in a row, this one included (feed it to the next call)


def decide_restart(outcome: str, failure_reason: Optional[str], restarts_done: int, max_restarts: int,
                   ran_s: float = 0.0, streak: int = 0, *, base_s: float = BACKOFF_BASE_S,
                   cap_s: float = BACKOFF_CAP_S, healthy_s: float = HEALTHY_S) -> RestartDecision:
    """Whether to restart after an attempt that ended with ``outcome`` and after how long.

    ``ran_s``: how long the attempt ran; ``streak``: the ``streak`` of the previous decision (0 at first).
    """
    if outcome != AttemptState.FAILED:
        return RestartDecision(False, f"attempt {outcome}")
    if failure_reason == "launch":
        return RestartDecision(False, "the processes could not be started; a restart would fail the same way")
    if failure_reason == "io":
        return RestartDecision(False, "the job dir cannot be written; a restart would fail the same way")
    if restarts_done >= max_restarts:
        return RestartDecision(False, f"no restarts left ({restarts_done} of --max-restarts {max_restarts} used)")
    streak = 1 if ran_s >= healthy_s else streak + 1
    delay = min(cap_s, base_s * 2.0 ** min(streak - 1, 64))
    return RestartDecision(True, f"restart {restarts_done + 1} of {max_restarts}", delay_s=delay, streak=streak)


class RestartPolicy:
    def __init__(self, max_restarts: int, lookup: CheckpointLookup = local_checkpoint_lookup,
                 base_s: float = BACKOFF_BASE_S, cap_s: float = BACKOFF_CAP_S) -> None:
        self.max_restarts = int(max_restarts)
        self.lookup = lookup
        self.base_s = base_s
        self.cap_s = cap_s

    def decide(self, result: AttemptResult, restarts_done: int, ran_s: float = 0.0,
               streak: int = 0) -> RestartDecision:
        return decide_restart(result.outcome, result.failure.reason if result.failure else None, restarts_done,
                              self.max_restarts, ran_s, streak, base_s=self.base_s, cap_s=self.cap_s)

    def resume_point(self, job_dir: str, ranks: Iterable[int]) -> Optional[ResumePoint]:
        return self.lookup(job_dir, ranks)
