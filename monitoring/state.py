"""Value types of aggregated monitoring state: what the aggregator fills and every view reads.

The aggregator (monitoring/aggregate.py) turns events and parsed text-log records into these; the
Prometheus collector, the web dashboard's JSON, `top`, `summary` and the report only read them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class DeviceState:
    """One rank/device of one job, as last seen."""
    job: str
    rank: int
    device: Optional[int] = None
    host: str = ""
    attempt: int = 0
    world_size: Optional[int] = None
    state: str = "unknown"           # a cluster.contracts.states.DeviceState value
    pid: Optional[int] = None
    epoch: int = 0
    epochs: Optional[int] = None     # planned epochs, when known
    step: int = 0                    # step within epoch
    steps_per_epoch: Optional[int] = None
    global_step: Optional[int] = None  # None: unknown (text logs that do not say)
    steps_seen: int = 0              # step records aggregated (for rates)
    loss: Optional[float] = None
    lr: Optional[float] = None
    step_time_s: Optional[float] = None          # last
    step_time_p50_s: Optional[float] = None      # sliding window
    step_time_p95_s: Optional[float] = None
    step_time_max_s: Optional[float] = None
    run_step_time_p50_s: Optional[float] = None  # whole run
    run_step_time_p95_s: Optional[float] = None
    run_step_time_max_s: Optional[float] = None
    images_per_s: Optional[float] = None
    compile_s: Optional[float] = None
    val_loss: Optional[float] = None
    miou: Optional[float] = None
    macc: Optional[float] = None
    allacc: Optional[float] = None
    best_miou: Optional[float] = None
    last_event_ts: Optional[float] = None
    straggler: bool = False
    error: Optional[str] = None
    # short recent histories for sparklines and charts: [(ts, value), ...], bounded
    step_time_history: List[tuple] = field(default_factory=list)
    loss_history: List[tuple] = field(default_factory=list)
    miou_history: List[tuple] = field(default_factory=list)   # (epoch, miou)
    # added by the aggregator (additive):
    last_event_age_s: Optional[float] = None     # now - last_event_ts at snapshot time
    epoch_time_s: Optional[float] = None         # last epoch's wall time
    mean_step_time_s: Optional[float] = None     # last epoch's mean step time (TimeMonitor's "per step time")
    stalled: bool = False                        # running, but no event for longer than stale_after_s
    dead: bool = False                           # the rank's process ended badly (job.json exit code / error)
    exit_code: Optional[int] = None              # from job.json's last attempt, when recorded
    source: str = ""                             # "events" or "text"
    # counts of the events' step times per STEP_TIME_BUCKETS bound (+Inf last), and their sum
    step_time_buckets: List[int] = field(default_factory=list)
    step_time_sum_s: float = 0.0

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class JobSummary:
    """One job: its devices plus job-wide figures."""
    job: str
    state: str = "unknown"
    attempt: int = 0
    restarts: int = 0
    devices: Dict[int, DeviceState] = field(default_factory=dict)   # by rank
    total_images_per_s: Optional[float] = None
    slowest_rank: Optional[int] = None
    stragglers: List[int] = field(default_factory=list)
    straggler_margin: float = 0.2
    # added by the aggregator (additive):
    world_size: Optional[int] = None
    updated_ts: Optional[float] = None           # when the snapshot was taken
    dead: List[int] = field(default_factory=list)      # ranks whose process ended badly
    stalled: List[int] = field(default_factory=list)   # running ranks without events for stale_after_s
    eval_results: List[Dict[str, Any]] = field(default_factory=list)  # job-level eval lines of text logs

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["devices"] = {str(r): dev.to_dict() for r, dev in sorted(self.devices.items())}
        return d
