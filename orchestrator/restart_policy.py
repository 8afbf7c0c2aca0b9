"""The failure policy: whether a failed attempt is restarted, and from which checkpoint.

``RestartPolicy.decide(result, restarts_done)`` looks only at the ``AttemptResult`` (data), so it
does not care where the workers ran.  The checkpoint lookup is pluggable: the default looks in the
local job dir (``cluster.contracts.jobdir.newest_common_checkpoint``: the newest global step that *every* rank
holds intact, i.e. sidecar present and sha256 matching, one config_sha); the multi-host launcher
passes a lookup that asks each host.

A restart resumes every rank from its own file of that step (``PSPNET_RESUME``); with no common
checkpoint the group restarts from scratch.  Stops (signals, ``stop``) and launch errors are never
restarted.
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


@dataclass(frozen=True)
class RestartDecision:
    restart: bool
    reason: str


class RestartPolicy:
    def __init__(self, max_restarts: int, lookup: CheckpointLookup = local_checkpoint_lookup) -> None:
        self.max_restarts = int(max_restarts)
        self.lookup = lookup

    def decide(self, result: AttemptResult, restarts_done: int) -> RestartDecision:
        if result.outcome != AttemptState.FAILED:
            return RestartDecision(False, f"attempt {result.outcome}")
        if result.failure is not None and result.failure.reason == "launch":
            return RestartDecision(False, "the processes could not be started; a restart would fail the same way")
        if restarts_done >= self.max_restarts:
            return RestartDecision(False, f"no restarts left ({restarts_done} of --max-restarts {self.max_restarts} used)")
        return RestartDecision(True, f"restart {restarts_done + 1} of {self.max_restarts}")

    def resume_point(self, job_dir: str, ranks: Iterable[int]) -> Optional[ResumePoint]:
        return self.lookup(job_dir, ranks)
