"""Aggregate event streams and text-log records into per-device and per-job state (no I/O here).

    agg = Aggregator(job="", window=100, straggler_margin=0.2, stale_after_s=300.0)
    agg.feed_lines(data)                # complete lines of event files -> lines seen
    agg.feed_events(events)             # parsed event dicts, oldest first (any ranks)
    agg.feed_text(rec)                  # one monitoring.textlog.TextRecord with .rank set
    agg.set_job_info(job_json_dict)     # job.json as read (monitoring.sources.read_job_json)
    agg.touch(rank, ts)                 # a text source changed at ts (text lines carry no time)
    summary = agg.snapshot(now=None)    # -> monitoring.state.JobSummary (fresh objects)
    agg.series(rank)                    # whole-run downsampled series for plots (dict of lists)

Every event reaches its rank one way: ``feed_events`` groups events by rank and folds them with
``monitoring.progress.Progress.fold``; the step events it returns feed the statistics (window and
whole-run percentiles, the exported histogram, downsampled series).  Lines are parsed with orjson;
a line orjson refuses (NaN, a marker) goes through the contract's ``parse_line``.  The statistics,
states and straggler rule are described in docs/monitoring.md.
"""
from __future__ import annotations

import bisect
import collections
import functools
import math
import operator
import time
from itertools import compress, repeat
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import orjson

from cluster.contracts.events import parse_line
from cluster.contracts.jobjson import rank_exit_codes
from monitoring.progress import Progress, integer, num
from monitoring.state import DeviceState, JobSummary

EXACT_LIMIT = 4096          # whole-run step times kept exactly up to this many, then histogram
HIST_LO, HIST_HI = 1e-6, 1e6    # histogram range in seconds
_LOG_RATIO = math.log(1.01)     # bucket width: 1 % relative
_NBUCKETS = int(math.ceil(math.log(HIST_HI / HIST_LO) / _LOG_RATIO)) + 1
RECENT = 120                # points kept in DeviceState.*_history
SERIES_CAP = 2048           # a whole-run series keeps at most 2 * SERIES_CAP points
BATCH = 8192                # lines parsed and folded at a time

#: Upper bounds (seconds) of the exported step-time histogram.  PSPNet steps take ~0.3-1.5 s on
#: Ascend and 0.05-30 s on CPU; the buckets cover both with roughly 2x spacing.
STEP_TIME_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def column(events: Sequence[Dict[str, Any]], key: str) -> List[Any]:
    """``[ev.get(key) for ev in events]``, looped in C (per-event Python work is what a full pass costs)."""
    return list(map(dict.get, events, repeat(key)))


def finite(values: List[Any]) -> List[Optional[float]]:
    """``values`` as finite floats, None where one is not: the usual column (all finite floats) is checked
    once as a whole (a NaN or an infinity makes the sum non-finite) and returned as it is."""
    if set(map(type, values)) == {float} and math.isfinite(sum(values)):
        return values
    return list(map(num, values))


def percentile_sorted(v: Sequence[float], q: float) -> float:
    """Quantile ``q`` (0..1) of sorted values, linear interpolation (numpy's default method)."""
    pos = q * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    frac = pos - lo
    a, b = v[lo], v[hi]
    return float(a + (b - a) * frac) if frac < 0.5 else float(b - (b - a) * (1.0 - frac))


class RunQuantiles:
    """Streaming quantiles of one device's step times over the whole run (bounded memory)."""

    __slots__ = ("count", "max", "_exact", "_sorted", "_hist", "_pending")

    def __init__(self) -> None:
        self.count = 0
        self.max: Optional[float] = None
        self._exact: Optional[List[float]] = []
        self._sorted = True
        self._hist: Optional[np.ndarray] = None
        self._pending: List[float] = []        # histogram mode: values not bucketed yet (numpy, in bulk)

    def add(self, values: List[float]) -> None:
        """Add finite step times."""
        if not values:
            return
        self.count += len(values)
        top = max(values)
        self.max = top if self.max is None or top > self.max else self.max
        if self._exact is None:
            self._pending += values
            if len(self._pending) >= EXACT_LIMIT:
                self._bucket()
            return
        self._exact += values
        self._sorted = False
        if len(self._exact) > EXACT_LIMIT:
            self._pending, self._exact = self._exact, None
            self._hist = np.zeros(_NBUCKETS, dtype=np.int64)
            self._bucket()

    def _bucket(self) -> None:
        v = np.asarray(self._pending, dtype=np.float64)
        self._pending = []
        idx = (np.log(np.clip(v, HIST_LO, HIST_HI) * (1.0 / HIST_LO)) * (1.0 / _LOG_RATIO)).astype(np.int64)
        self._hist += np.bincount(np.minimum(idx, _NBUCKETS - 1), minlength=_NBUCKETS)

    def quantiles(self, qs: Sequence[float]) -> List[Optional[float]]:
        if self.count == 0:
            return [None for _ in qs]
        if self._exact is not None:
            if not self._sorted:
                self._exact.sort()
                self._sorted = True
            return [percentile_sorted(self._exact, q) for q in qs]
        if self._pending:
            self._bucket()
        cum = np.cumsum(self._hist)
        out: List[Optional[float]] = []
        for q in qs:
            b = int(np.searchsorted(cum, q * (self.count - 1) + 1))
            mid = HIST_LO * math.exp((b + 0.5) * _LOG_RATIO)    # geometric middle of the bucket
            out.append(min(mid, self.max) if self.max is not None else mid)
        return out

    def quantile(self, q: float) -> Optional[float]:
        return self.quantiles((q,))[0]


class Series:
    """A whole-run series downsampled to at most ``2*cap`` points: keep every ``stride``-th sample."""

    __slots__ = ("cap", "stride", "n", "x", "y")

    def __init__(self, cap: int = SERIES_CAP) -> None:
        self.cap, self.stride, self.n = cap, 1, 0
        self.x: List[int] = []
        self.y: List[float] = []

    def take(self, count: int) -> range:
        """Reserve the next ``count`` samples; returns the positions (within them) that are kept."""
        n0 = self.n
        self.n += count
        while self.n // self.stride > 2 * self.cap:          # thin what is kept, before adding
            self.stride *= 2
            keep = [x % self.stride == 0 for x in self.x]
            self.x = list(compress(self.x, keep))
            self.y = list(compress(self.y, keep))
        return range((-n0) % self.stride, count, self.stride)

    def put(self, first: int, positions: range, values: Sequence[Optional[float]]) -> None:
        if None in values:
            kept = [(first + pos, v) for pos, v in zip(positions, values) if v is not None]
            self.x += [x for x, _ in kept]
            self.y += [v for _, v in kept]
        else:
            self.x += range(first + positions.start, first + positions.stop, positions.step)
            self.y += values

    def extend(self, values: Sequence[Optional[float]]) -> None:
        n0 = self.n
        keep = self.take(len(values))
        self.put(n0, keep, values[keep.start::keep.step])


_bucket_of = functools.partial(bisect.bisect_left, STEP_TIME_BUCKETS)


class _Device:
    """One rank: its Progress plus the statistics of its step times."""

    def __init__(self, job: str, rank: int, window: int) -> None:
        self.progress = Progress(rank, job)
        self.source = ""
        self.window: collections.deque = collections.deque(maxlen=window)
        self.run = RunQuantiles()
        self.step_series = Series()
        self.loss_series = Series()
        self.recent_steps: collections.deque = collections.deque(maxlen=RECENT)   # (ts, seconds), known values
        self.recent_loss: collections.deque = collections.deque(maxlen=RECENT)
        self.buckets = [0] * (len(STEP_TIME_BUCKETS) + 1)    # exported histogram (events' step times)
        self.bucket_sum = 0.0
        self.epoch_step_times: List[tuple] = []              # (epoch, mean step time) per epoch

    def add_times(self, t: List[float]) -> None:
        if t:
            self.window.extend(t)
            self.run.add(t)
            self.step_series.extend(t)

    def add_steps(self, steps: Sequence[Dict[str, Any]]) -> None:
        """Statistics of step events (oldest first)."""
        raw = column(steps, "step_time_s")
        t = finite(raw)
        if t is not raw:
            t = [v for v in t if v is not None]
        self.add_times(t)
        if t and min(t) < 0:
            t = [v for v in t if v >= 0]
        for b, c in collections.Counter(map(_bucket_of, t)).items():
            self.buckets[b] += c
        self.bucket_sum += math.fsum(t)
        n0 = self.loss_series.n
        keep = self.loss_series.take(len(steps))
        self.loss_series.put(n0, keep, finite(column(steps[keep.start::keep.step], "loss")))
        hs: List[tuple] = []            # the newest RECENT known values, walking back
        hl: List[tuple] = []
        for ev in reversed(steps):
            if len(hs) >= RECENT and len(hl) >= RECENT:
                break
            ts, st, loss = num(ev.get("ts")), num(ev.get("step_time_s")), num(ev.get("loss"))
            if st is not None and len(hs) < RECENT:
                hs.append((ts, st))
            if loss is not None and len(hl) < RECENT:
                hl.append((ts, loss))
        self.recent_steps.extend(reversed(hs))
        self.recent_loss.extend(reversed(hl))


def parse_lines(lines: List[bytes]) -> tuple:
    """``(events, n)``: the events among ``lines`` (without newlines), and the number of non-empty lines."""
    if not all(lines):
        lines = [line for line in lines if line]
    try:
        parsed = list(map(orjson.loads, lines))
    except orjson.JSONDecodeError:       # NaN, a marker, a torn line...: one line at a time
        parsed = []
        for line in lines:
            if line:
                try:
                    parsed.append(orjson.loads(line))
                except orjson.JSONDecodeError:
                    parsed.append(parse_line(line))
    if set(map(type, parsed)) == {dict}:
        return parsed, len(parsed)
    return [ev for ev in parsed if type(ev) is dict], len(parsed)


class Aggregator:
    """Folds events and text records into per-device state; see the module docstring."""

    def __init__(self, job: str = "", window: int = 100, straggler_margin: float = 0.2,
                 stale_after_s: float = 300.0) -> None:
        self.job = job
        self.window = int(window)
        self.straggler_margin = float(straggler_margin)
        self.stale_after_s = float(stale_after_s)
        self.devices: Dict[int, _Device] = {}
        self.job_info: Dict[str, Any] = {}
        self.eval_results: List[Dict[str, Any]] = []
        self.max_attempt = 0
        self.world_size: Optional[int] = None

    def _dev(self, rank: int) -> _Device:
        d = self.devices.get(rank)
        if d is None:
            d = self.devices[rank] = _Device(self.job, rank, self.window)
        return d

    # ------------------------------------------------------------------ input
    def feed_lines(self, data: bytes) -> int:
        """Apply complete lines of event files; returns the number of non-empty lines."""
        lines = data.split(b"\n")
        n = 0
        for i in range(0, len(lines), BATCH):       # few parsed events alive at once: less memory, less GC
            events, count = parse_lines(lines[i:i + BATCH])
            self.feed_events(events)
            n += count
        return n

    def feed_event(self, ev: Dict[str, Any]) -> None:
        if isinstance(ev, dict):
            self.feed_events([ev])

    def feed_events(self, events: Sequence[Dict[str, Any]]) -> None:
        """Apply parsed events, oldest first (unknown names and fields are ignored; bad values skipped)."""
        if not events:
            return
        ranks = column(events, "rank")
        if ranks.count(ranks[0]) == len(ranks):
            groups: Dict[Any, Any] = {ranks[0]: events}
        else:
            groups = {}
            for r, ev in zip(ranks, events):
                groups.setdefault(r, []).append(ev)
        for raw, evs in groups.items():
            rank = integer(raw) if type(raw) is not bool else None
            if rank is None or rank < 0:
                continue
            names = column(evs, "event")
            if set(map(type, names)) != {str}:        # a record without an event name is no event
                evs = [ev for ev, name in zip(evs, names) if type(name) is str]
                names = [name for name in names if type(name) is str]
                if not evs:
                    continue
            d = self._dev(rank)
            d.source = d.source or "events"
            d.add_steps(d.progress.fold(evs, names))
            for i in compress(range(len(names)), map(operator.eq, names, repeat("epoch"))):
                mst = num(evs[i].get("mean_step_time_s"))
                if mst is not None:
                    d.epoch_step_times.append((integer(evs[i].get("epoch")), mst))
            p = d.progress
            self.max_attempt = max(self.max_attempt, p.attempt)
            if p.world_size:
                self.world_size = max(self.world_size or 0, p.world_size)
            if not self.job and p.job:
                self.job = p.job

    def feed_text(self, rec: Any) -> None:
        """Apply one TextRecord (monitoring.textlog) whose ``rank`` is set."""
        kind, fields = getattr(rec, "kind", None), getattr(rec, "fields", None) or {}
        if kind == "event" and isinstance(fields.get("event"), dict):
            return self.feed_events([fields["event"]])
        if kind == "eval":
            return self.eval_results.append(dict(fields))
        rank = getattr(rec, "rank", None)
        if kind == "event" or not isinstance(rank, int) or rank < 0:
            return None
        d = self._dev(rank)
        p, d.source = d.progress, d.source or "text"
        if getattr(rec, "device", None) is not None:
            p.device = rec.device
        if p.state in ("unknown", "starting"):
            p.state = "running"
        st = num(fields.get("step_time_s"))
        if kind == "step":
            p.steps_seen += 1
            for key in ("epoch", "step", "steps_per_epoch", "epochs"):
                setattr(p, key, fields.get(key) or getattr(p, key))
            if d.source != "events":            # our own logs: the events say it
                p.global_step = fields.get("global_step")      # None: the lines do not say
            loss = num(fields.get("loss"))
            d.loss_series.extend([loss])
            if loss is not None:
                p.loss = loss
                d.recent_loss.append((None, loss))
        elif kind == "time":
            p.epoch_time_s = num(fields.get("epoch_time_s"))
            if st is not None:
                p.mean_step_time_s = st
                d.epoch_step_times.append((None, st))
        elif kind == "val":
            p.epoch = max(p.epoch, fields.get("epoch") or 0)
            v = num(fields.get("val_loss"))
            p.val_loss = p.val_loss if v is None else v
        elif kind == "miou":
            if fields.get("epoch"):
                p.epoch = max(p.epoch, fields["epoch"])
            p.note_miou(fields.get("epoch"), num(fields.get("miou")), num(fields.get("best_miou")))
        # a step time of a text line (MindFormers' per step, TimeMonitor's per-epoch mean) counts where no
        # event stream gives each step's own
        if kind in ("step", "time") and st is not None and d.source != "events":
            p.step_time_s = st
            d.add_times([st])
            d.recent_steps.append((None, st))
        return None

    def touch(self, rank: int, ts: float) -> None:
        """A text source of ``rank`` changed at ``ts`` (its lines carry no time of their own)."""
        d = self.devices.get(rank)
        if d is not None and (d.progress.last_event_ts is None or ts > d.progress.last_event_ts):
            d.progress.last_event_ts = ts

    def set_job_info(self, info: Any) -> None:
        """job.json as read; only what is recognised is used."""
        self.job_info = info if isinstance(info, dict) else {}
        job = self.job_info.get("job_id")
        if isinstance(job, str) and job and not self.job:
            self.job = job

    # ------------------------------------------------------------------ output
    def series(self, rank: int) -> Dict[str, list]:
        """Whole-run series of one rank for plots: step times and losses by step index, mIoU by epoch."""
        d = self.devices.get(rank)
        if d is None:
            return {"step_x": [], "step_time_s": [], "loss_x": [], "loss": [], "miou": [], "val_loss": [],
                    "epoch_step_time_s": []}
        return {"step_x": list(d.step_series.x), "step_time_s": list(d.step_series.y),
                "loss_x": list(d.loss_series.x), "loss": list(d.loss_series.y),
                "miou": list(d.progress.miou_history), "val_loss": list(d.progress.val_loss_history),
                "epoch_step_time_s": list(d.epoch_step_times)}

    def snapshot(self, now: Optional[float] = None, full: bool = True) -> JobSummary:
        """The job as of ``now``; ``full=False`` leaves out the whole-run percentiles and the histories
        (/metrics shows neither: about a third of a 1,024-device snapshot's cost)."""
        now = time.time() if now is None else now
        info = self.job_info
        attempts = info.get("attempts") if isinstance(info.get("attempts"), list) else []
        job_state = info.get("state") if isinstance(info.get("state"), str) else None
        last = attempts[-1] if attempts and isinstance(attempts[-1], dict) else {}
        exit_codes = rank_exit_codes(last)
        failure = last.get("failure") if isinstance(last.get("failure"), dict) else None
        failed_rank = integer(failure.get("rank")) if failure else None
        devices: Dict[int, DeviceState] = {}
        for rank, d in sorted(self.devices.items()):
            s = DeviceState.__new__(DeviceState)
            f = s.__dict__
            f.update(_DEFAULTS)
            f.update(d.progress.__dict__)
            f["job"] = self.job or d.progress.job
            f["source"] = d.source
            f["step_time_buckets"] = list(d.buckets)
            f["step_time_sum_s"] = d.bucket_sum
            w = sorted(d.window)
            if w:
                f["step_time_p50_s"] = percentile_sorted(w, 0.5)
                f["step_time_p95_s"] = percentile_sorted(w, 0.95)
                f["step_time_max_s"] = w[-1]
            if full:
                f["miou_history"] = list(d.progress.miou_history)
                f["val_loss_history"] = list(d.progress.val_loss_history)
                f["step_time_history"] = list(d.recent_steps)
                f["loss_history"] = list(d.recent_loss)
                f["run_step_time_p50_s"], f["run_step_time_p95_s"] = d.run.quantiles((0.5, 0.95))
                f["run_step_time_max_s"] = d.run.max
            else:
                f["miou_history"], f["val_loss_history"], f["step_time_history"], f["loss_history"] = [], [], [], []
            if s.last_event_ts is not None:
                s.last_event_age_s = max(0.0, now - s.last_event_ts)
            code = exit_codes.get(rank)
            if code is not None:
                s.exit_code = code
                s.dead = code != 0
            if failed_rank == rank and failure is not None:
                s.dead = True
                if not s.error and isinstance(failure.get("message"), str):
                    s.error = failure["message"][:500]
            if s.dead and s.state != "finished":
                s.state = "failed"
            s.dead = s.dead or s.state == "failed"
            if job_state in ("succeeded", "failed", "stopped") and s.state in ("starting", "running", "unknown"):
                s.state = "failed" if job_state == "failed" and s.dead else "stopped"
            stale = s.last_event_age_s is not None and s.last_event_age_s > self.stale_after_s
            if s.source == "text" and s.state == "running" and (stale or s.last_event_age_s is None):
                s.state = "unknown"          # plain logs do not say that they ended: only "not growing"
            elif s.state in ("starting", "running") and stale:
                s.stalled = True
            devices[rank] = s
        summary = JobSummary(job=self.job or str(info.get("job_id") or ""), straggler_margin=self.straggler_margin)
        summary.devices = devices
        summary.updated_ts = now
        summary.world_size = self.world_size or (len(devices) or None)
        summary.eval_results = list(self.eval_results)
        summary.attempt = max(self.max_attempt, len(attempts) - 1 if attempts else 0)
        summary.restarts = max(summary.attempt, integer(info.get("restarts"), 0) or 0)
        summary.state = job_state or _derived_state(devices)
        ips = [s.images_per_s for s in devices.values() if s.images_per_s is not None and not s.dead
               and s.state not in ("stopped", "failed")]
        summary.total_images_per_s = float(sum(ips)) if ips else None
        p50 = {r: (s.step_time_p50_s if s.step_time_p50_s is not None else s.run_step_time_p50_s)
               for r, s in devices.items()}
        p50 = {r: v for r, v in p50.items() if v is not None}
        if p50:
            summary.slowest_rank = max(p50, key=lambda r: (p50[r], -r))
        summary.stragglers = stragglers(p50, self.straggler_margin)
        for r in summary.stragglers:
            devices[r].straggler = True
        summary.dead = [r for r, s in devices.items() if s.dead]
        summary.stalled = [r for r, s in devices.items() if s.stalled]
        return summary


_DEFAULTS = DeviceState(job="", rank=0).__dict__


def stragglers(p50: Dict[int, float], margin: float) -> List[int]:
    """Ranks whose p50 exceeds the median of the OTHER ranks' p50 by more than ``margin``."""
    n = len(p50)
    if n < 2:
        return []
    order = sorted(p50.items(), key=lambda kv: kv[1])
    v = [x for _, x in order]
    m = n - 1                                     # size of "the others"

    def other(j: int, skip: int) -> float:       # j-th smallest of v without index ``skip``
        return v[j] if j < skip else v[j + 1]

    out = []
    for i, (rank, value) in enumerate(order):
        med = other(m // 2, i) if m % 2 else (other(m // 2 - 1, i) + other(m // 2, i)) / 2.0
        if med > 0 and value > med * (1.0 + margin):
            out.append(rank)
    return sorted(out)


def _derived_state(devices: Dict[int, DeviceState]) -> str:
    states = {s.state for s in devices.values()}
    if not states:
        return "unknown"
    if "failed" in states:
        return "failed"
    if states <= {"finished"}:
        return "succeeded"
    if states & {"running", "starting"}:
        return "running"
    return sorted(states)[0]
