"""Aggregate event streams and text-log records into per-device and per-job state.

Stable API (the exporter, web dashboard, `top`, `summary` and the report build on it)::

    agg = Aggregator(job="", window=100, straggler_margin=0.2, stale_after_s=300.0)
    agg.feed_event(ev)                  # one parsed event dict (cluster.contracts.events.parse_line)
    agg.feed_event_chunk(data)          # bytes of complete lines of one events/rank_<R>.jsonl file (fast path;
                                        #    optional scan=scan_chunk(data), computed elsewhere, e.g. a worker)
    agg.feed_text(rec)                  # one monitoring.textlog.TextRecord with .rank set
    agg.set_job_info(job_json_dict)     # job.json as read (tolerant: unknown or missing keys are fine)
    agg.touch(rank, ts)                 # a text source changed at ts (text lines carry no time)
    summary = agg.snapshot(now=None)    # -> monitoring.state.JobSummary (fresh objects, safe to keep;
                                        #    treat the *_history lists as read-only: they are shared)
    agg.series(rank)                    # whole-run downsampled series for plots (dict of lists)

    mon = JobMonitor(paths, job=None)   # finds sources (monitoring.sources), tails them incrementally
    mon.poll()                          # reads only new bytes of every source -> lines consumed (unchanged
                                        #    folders, job.json and files are skipped without reading)
    mon.summary(now=None)               # == mon.aggregator.snapshot()

Statistics per device: step time p50/p95/max over a sliding window of the last ``window`` steps
(exact), and over the whole run: exact while at most ``EXACT_LIMIT`` step times were seen, then a
log-bucket histogram with 1 % relative resolution (bounded memory whatever the run length; the
maximum stays exact).  Percentiles of exact samples interpolate linearly (numpy's default).

Straggler: a device whose step-time p50 (the window's, else the run's) exceeds the median of the
other devices' p50 by more than ``straggler_margin`` (default 0.2 = 20 %); needs two or more devices.

States: ``start`` -> starting, ``compiled``/``step``/``epoch``/``checkpoint``/``resumed`` -> running,
``finished`` -> finished, ``error`` -> failed; a later attempt's ``start`` resets the state (best
mIoU and histories are kept).  At snapshot time a running device without events for
``stale_after_s`` is flagged ``stalled``; job.json's last attempt marks ranks with a non-zero exit
code ``dead``, and a finished job (state succeeded/failed/stopped) turns still-"running" devices into
``stopped``/``failed``.  Devices known only from plain text logs are "running" while their file
grew within ``stale_after_s`` and "unknown" otherwise (text logs do not say that they ended).
"""
from __future__ import annotations

import bisect
import math
import os
import re
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from cluster.contracts.jobdir import EVENTS as EVENTS_DIR, JOB_JSON, LOGS as LOGS_DIR
from cluster.contracts.events import parse_line
from cluster.contracts.jobjson import JobJsonError, load_job_json, rank_exit_codes
from monitoring.state import DeviceState, JobSummary

EXACT_LIMIT = 4096          # whole-run step times kept exactly up to this many, then histogram
HIST_LO = 1e-6              # histogram range in seconds
HIST_HI = 1e6
HIST_RATIO = 1.01           # bucket width: 1 % relative
_LOG_RATIO = math.log(HIST_RATIO)
_NBUCKETS = int(math.ceil(math.log(HIST_HI / HIST_LO) / _LOG_RATIO)) + 1
RECENT = 120                # points kept in DeviceState.*_history
SERIES_CAP = 2048           # points kept per whole-run downsampled series
SMALL_FLUSH = 64            # pending step times folded in without numpy up to this many


class RunQuantiles:
    """Streaming quantiles of one device's step times over the whole run (bounded memory)."""

    __slots__ = ("count", "max", "_exact", "_hist")

    def __init__(self) -> None:
        self.count = 0
        self.max: Optional[float] = None
        self._exact: Optional[List[float]] = []     # kept sorted
        self._hist: Optional[np.ndarray] = None

    def add_few(self, values: List[float]) -> None:
        """``add_many`` for a short list of finite Python floats (no numpy round trip)."""
        if not values:
            return
        if self._exact is None or len(self._exact) + len(values) > EXACT_LIMIT:
            self.add_many(np.asarray(values, dtype=np.float64))
            return
        self.count += len(values)
        vmax = max(values)
        self.max = vmax if self.max is None else max(self.max, vmax)
        for v in values:
            bisect.insort(self._exact, v)

    def add_many(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        self.count += int(values.size)
        vmax = float(values.max())
        self.max = vmax if self.max is None else max(self.max, vmax)
        if self._exact is not None:
            if len(self._exact) + values.size <= EXACT_LIMIT:
                self._exact.extend(values.tolist())
                self._exact.sort()
                return
            values = np.concatenate([np.asarray(self._exact, dtype=np.float64), values])
            self._exact = None
            self._hist = np.zeros(_NBUCKETS, dtype=np.int64)
        idx = (np.log(np.clip(values, HIST_LO, HIST_HI) * (1.0 / HIST_LO)) * (1.0 / _LOG_RATIO)).astype(np.int64)
        np.clip(idx, 0, _NBUCKETS - 1, out=idx)
        self._hist += np.bincount(idx, minlength=_NBUCKETS)

    def quantiles(self, qs: Sequence[float]) -> List[Optional[float]]:
        if self.count == 0:
            return [None for _ in qs]
        if self._exact is not None:
            return [percentile_sorted(self._exact, q) for q in qs]
        cum = np.cumsum(self._hist)
        out: List[Optional[float]] = []
        for q in qs:
            b = int(np.searchsorted(cum, q * (self.count - 1) + 1))
            mid = HIST_LO * HIST_RATIO ** (b + 0.5)   # geometric middle of the bucket
            out.append(float(min(mid, self.max)) if self.max is not None else float(mid))
        return out

    def quantile(self, q: float) -> Optional[float]:
        return self.quantiles((q,))[0]


def percentile_sorted(v: Sequence[float], q: float) -> float:
    """Quantile ``q`` (0..1) of sorted values, linear interpolation (numpy's default method)."""
    pos = q * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    frac = pos - lo
    a, b = v[lo], v[hi]
    return float(a + (b - a) * frac) if frac < 0.5 else float(b - (b - a) * (1.0 - frac))


class Series:
    """A whole-run series downsampled to at most ``2*cap`` points: keep every ``stride``-th sample."""

    __slots__ = ("cap", "stride", "n", "x", "y")

    def __init__(self, cap: int = SERIES_CAP) -> None:
        self.cap, self.stride, self.n = cap, 1, 0
        self.x: List[int] = []
        self.y: List[float] = []

    def take(self, count: int) -> range:
        """Reserve the next ``count`` samples; returns the positions (0-based, within them) to keep."""
        n0 = self.n
        self.n += int(count)
        while self.n // self.stride > 2 * self.cap:          # thin what is kept, before adding
            self.stride *= 2
            keep = [i for i, x in enumerate(self.x) if x % self.stride == 0]
            self.x = [self.x[i] for i in keep]
            self.y = [self.y[i] for i in keep]
        return range((-n0) % self.stride, int(count), self.stride)

    def put(self, first_index: int, positions: range, values: Sequence[float]) -> None:
        """Store the values of ``positions`` (from ``take``); non-finite values leave a gap."""
        for pos, v in zip(positions, values):
            if math.isfinite(v):
                self.x.append(first_index + pos)
                self.y.append(v)

    def add_many(self, values: np.ndarray) -> None:
        n0 = self.n
        keep = self.take(values.size)
        self.put(n0, keep, values[keep.start::keep.step].tolist())

    def add_few(self, values: List[float]) -> None:
        n0 = self.n
        keep = self.take(len(values))
        self.put(n0, keep, values[keep.start::keep.step])


class _Recent(deque):
    """The last ``maxlen`` (ts, value) entries; knows whether any kept one has value None (a gap)."""

    def __init__(self, maxlen: int) -> None:
        super().__init__((), maxlen)
        self.appended = 0          # entries ever appended
        self.last_gap = 0          # 1-based append number of the newest entry with value None

    def append(self, item: tuple) -> None:
        deque.append(self, item)
        self.appended += 1
        if item[1] is None:
            self.last_gap = self.appended

    def without_gaps(self) -> list:
        """The entries whose value is not None, as a new list."""
        if self.last_gap > self.appended - len(self):
            return [(a, b) for a, b in self if b is not None]
        return list(self)


class _Device:
    """Mutable per-rank accumulator; ``state`` is the DeviceState copied out at snapshot."""

    def __init__(self, job: str, rank: int, window: int) -> None:
        self.state = DeviceState(job=job, rank=rank)
        self.window: deque = deque(maxlen=window)
        self._wsorted: List[float] = []            # the window's values, sorted (kept in step with it)
        self.run = RunQuantiles()
        self.step_series = Series()
        self.loss_series = Series()
        self.recent_steps = _Recent(RECENT)
        self.recent_loss = _Recent(RECENT)
        self.pending: List[float] = []            # step times not yet folded into the statistics
        self.pending_loss: List[float] = []
        self.epoch_step_times: List[tuple] = []   # (epoch, mean step time) from epoch events / TimeMonitor
        self._stats_key: Any = None                # snapshot caches: recomputed only when inputs changed
        self._stats: tuple = (None,) * 6
        self._hist_key: Any = None
        self._hists: tuple = ([], [])

    def stats(self) -> tuple:
        """(window p50, p95, max, run p50, p95, max), cached until new step times arrive."""
        key = (self.run.count, len(self.window))
        if key != self._stats_key:
            w = self._wsorted
            win = (percentile_sorted(w, 0.5), percentile_sorted(w, 0.95), w[-1]) if w else (None, None, None)
            p50, p95 = self.run.quantiles((0.5, 0.95))
            self._stats = win + (p50, p95, self.run.max)
            self._stats_key = key
        return self._stats

    def histories(self) -> tuple:
        """(step-time history, loss history) without gaps, cached until something is appended."""
        key = (self.recent_steps.appended, self.recent_loss.appended)
        if key != self._hist_key:
            self._hists = (self.recent_steps.without_gaps(), self.recent_loss.without_gaps())
            self._hist_key = key
        return self._hists

    def flush(self) -> None:
        if self.pending:
            if len(self.pending) <= SMALL_FLUSH:        # a live job between two scrapes: plain floats
                t = [float(v) for v in self.pending if math.isfinite(v)]
                self.pending = []
                if t:
                    if self.window.maxlen:
                        window, ws = self.window, self._wsorted
                        for v in t[-window.maxlen:]:
                            if len(window) == window.maxlen:
                                del ws[bisect.bisect_left(ws, window[0])]
                            window.append(v)
                            bisect.insort(ws, v)
                    self.run.add_few(t)
                    self.step_series.add_few(t)
            else:
                t = np.asarray(self.pending, dtype=np.float64)
                self.pending = []
                self.add_times(t)
        if self.pending_loss:
            if len(self.pending_loss) <= SMALL_FLUSH:
                lv = [float(v) for v in self.pending_loss]
                self.pending_loss = []
                self.loss_series.add_few(lv)
            else:
                lv = np.asarray(self.pending_loss, dtype=np.float64)
                self.pending_loss = []
                self.loss_series.add_many(lv)

    def add_times(self, t: np.ndarray) -> None:
        t = t[np.isfinite(t)]
        if t.size == 0:
            return
        self.window.extend(t[-self.window.maxlen:].tolist() if self.window.maxlen else [])
        self._wsorted = sorted(self.window)
        self.run.add_many(t)
        self.step_series.add_many(t)


def _num(value: Any) -> Optional[float]:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    return None


def _int(value: Any, default: Optional[int] = None) -> Optional[int]:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return default


# fast path: patterns over a whole chunk of one rank's event file
_STEP_TAG = b'"event":"step"'
_EVENT_RE = re.compile(rb'"event":"([^"\n]*)"')
_STEP_TIME_RE = re.compile(rb'"step_time_s":([^,}]*)')
_LOSS_RE = re.compile(rb'"loss":([^,}]*)')
_TS_RE = re.compile(rb'"ts":([^,}]*)')
_LAST_FIELDS = ("loss", "lr", "images_per_s", "epoch", "step", "global_step", "steps_per_epoch")
FAST_MIN_BYTES = 16 << 10     # smaller chunks go line by line (the fixed costs would dominate)
PARALLEL_MIN_BYTES = 8 << 20  # a poll with two or more event chunks this big scans them in worker processes


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
        self.lines_seen = 0
        self.fast_chunks = 0          # chunks taken by the fast path (for tests and benchmarks)

    # ------------------------------------------------------------------ input
    def _dev(self, rank: int) -> _Device:
        d = self.devices.get(rank)
        if d is None:
            d = self.devices[rank] = _Device(self.job, rank, self.window)
        return d

    def feed_event(self, ev: Dict[str, Any]) -> None:
        """Apply one parsed event (unknown names and fields are ignored; bad values are skipped)."""
        if not isinstance(ev, dict):
            return
        rank = _int(ev.get("rank"))
        if rank is None or rank < 0:
            return
        name = ev.get("event")
        d = self._dev(rank)
        if name == "step":
            self._step_fields(d, ev)
            st = _num(ev.get("step_time_s"))
            if st is not None:
                d.pending.append(st)
            loss = _num(ev.get("loss"))
            d.pending_loss.append(math.nan if loss is None else loss)   # x of the loss series = step index
            if len(d.pending) >= 4096 or len(d.pending_loss) >= 4096:
                d.flush()
            return
        self._common(d, ev)
        s = d.state
        if name == "start":                  # a (re)started process: its earlier error is history
            s.error = None
            s.state = "starting"
            s.pid = _int(ev.get("pid"), s.pid)
        elif name == "compiled":
            s.compile_s = _num(ev.get("seconds"))
            s.state = "running"
        elif name == "epoch":
            s.state = "running"
            epoch = _int(ev.get("epoch"))
            if epoch is not None:
                s.epoch = epoch
            s.epoch_time_s = _num(ev.get("epoch_time_s")) or s.epoch_time_s
            mst = _num(ev.get("mean_step_time_s"))
            if mst is not None:
                s.mean_step_time_s = mst
                d.epoch_step_times.append((epoch, mst))
            for key in ("val_loss", "miou", "macc", "allacc"):
                v = _num(ev.get(key))
                if v is not None:
                    setattr(s, key, v)
            self._miou(d, epoch, _num(ev.get("miou")), _num(ev.get("best_miou")))
        elif name in ("checkpoint", "resumed"):
            if s.state in ("unknown", "starting"):
                s.state = "running"
            gs = _int(ev.get("global_step"))
            if name == "resumed" and gs is not None:
                s.global_step = gs
                s.epoch = _int(ev.get("epoch"), s.epoch) or s.epoch
        elif name == "finished":
            s.state = "finished"
            s.epochs = _int(ev.get("epochs"), s.epochs)
            b = _num(ev.get("best_miou"))
            if b is not None:
                s.best_miou = b if s.best_miou is None else max(s.best_miou, b)
        elif name == "error":
            s.state = "failed"
            msg = ev.get("message")
            s.error = str(msg)[:500] if msg is not None else "error"

    def _common(self, d: _Device, ev: Dict[str, Any]) -> None:
        s = d.state
        s.source = s.source or "events"
        ts = _num(ev.get("ts"))
        if ts is not None and (s.last_event_ts is None or ts >= s.last_event_ts):
            s.last_event_ts = ts
        attempt = _int(ev.get("attempt"), 0) or 0
        if attempt > s.attempt:
            s.attempt = attempt
            s.error = None
            if s.state in ("failed", "finished", "stopped"):
                s.state = "starting"
        self.max_attempt = max(self.max_attempt, attempt)
        ws = _int(ev.get("world_size"))
        if ws is not None and ws > 0:
            s.world_size = ws
            self.world_size = max(self.world_size or 0, ws)
        dev = _int(ev.get("device"))
        if dev is not None:
            s.device = dev
        host = ev.get("host")
        if isinstance(host, str) and host:
            s.host = host
        job = ev.get("job")
        if isinstance(job, str) and job and not self.job:
            self.job = job
        if not s.job and self.job:
            s.job = self.job

    def _step_fields(self, d: _Device, ev: Dict[str, Any]) -> None:
        """The 'last seen' fields of a step event (statistics are added separately)."""
        self._common(d, ev)
        s = d.state
        if s.state not in ("finished",):
            s.state = "running"
        s.steps_seen += 1
        for key in ("epoch", "step", "global_step"):
            v = _int(ev.get(key))
            if v is not None:
                setattr(s, key, v)
        spe = _int(ev.get("steps_per_epoch"))
        if spe:
            s.steps_per_epoch = spe
        epochs = _int(ev.get("epochs"))
        if epochs:
            s.epochs = epochs
        for key in ("loss", "lr", "images_per_s", "step_time_s"):
            v = _num(ev.get(key))
            if v is not None:
                setattr(s, key, v)
        ts = _num(ev.get("ts"))
        # recent histories cover the last RECENT steps; a missing value is a gap (dropped at snapshot)
        d.recent_steps.append((ts, _num(ev.get("step_time_s"))))
        d.recent_loss.append((ts, _num(ev.get("loss"))))

    def _miou(self, d: _Device, epoch: Optional[int], miou: Optional[float], best: Optional[float]) -> None:
        s = d.state
        if miou is not None:
            s.miou = miou
            s.miou_history.append((epoch, miou))
        cands = [v for v in (s.best_miou, best, miou) if v is not None]
        if cands:
            s.best_miou = max(cands)

    def feed_event_chunk(self, data: bytes, scan: Any = False) -> int:
        """Apply complete lines of ONE rank's event file; returns the number of lines.

        Fast path for the common case (mostly well-formed step events of one rank): the step times
        and losses of the whole chunk are pulled out with two regex scans and folded in with numpy;
        only non-step events and the last step line are json-parsed.  Any chunk that does not pass
        the structure checks (one event per line, every line ``{...}``, one rank, numeric values)
        goes through ``parse_line`` line by line, so results are the same either way.
        ``scan``: ``scan_chunk(data)`` when it was computed already (JobMonitor's worker processes).
        """
        if not data:
            return 0
        n_lines = self._fast_chunk(data, scan) if len(data) >= FAST_MIN_BYTES else None
        if n_lines is None:
            n_lines = 0
            for line in data.split(b"\n"):
                if line:
                    n_lines += 1
                    ev = parse_line(line)
                    if ev is not None:
                        self.feed_event(ev)
        self.lines_seen += n_lines
        return n_lines

    def _fast_chunk(self, data: bytes, scan: Any = False) -> Optional[int]:
        """The fast path; returns the number of lines, or None (nothing applied) to fall back.

        ``scan``: the result of ``scan_chunk(data)`` when already computed (e.g. in a worker process).
        """
        if scan is False:
            scan = scan_chunk(data)
        if scan is None:
            return None
        n_lines, n_step, nl, other_idx, other_evs, t, last_at, last_ev, rank = scan
        starts = np.empty(n_lines, dtype=np.int64)
        starts[0] = 0
        starts[1:] = nl[:-1] + 1
        d = self._dev(rank)
        d.flush()
        for p, ev in other_evs:
            if ev is not None and p < last_at:
                self.feed_event(ev)
        # step statistics of the whole chunk, then the last step's fields
        d.add_times(t)
        # the loss series keeps every stride-th step: read the loss of those lines only
        n0 = d.loss_series.n
        keep = d.loss_series.take(n_step)
        if keep:
            step_line = (np.arange(n_lines) if not other_idx
                         else np.setdiff1d(np.arange(n_lines), np.asarray(other_idx)))
            sel = step_line[keep.start::keep.step]
            d.loss_series.put(n0, keep, [_search_float(_LOSS_RE, data, int(starts[i]), int(nl[i]))
                                         for i in sel.tolist()])
        steps_before = d.state.steps_seen
        k = min(RECENT, n_step) - 1                 # recent history: the k steps before the last one
        if k > 0:
            ts, lv = self._tail_fields(data, last_at, k)
            for when, st, loss in zip(ts, t[-k - 1:-1].tolist(), lv):
                when = when if when is not None and math.isfinite(when) else None
                d.recent_steps.append((when, st if math.isfinite(st) else None))
                d.recent_loss.append((when, loss if loss is not None and math.isfinite(loss) else None))
        self._step_fields(d, last_ev)
        d.state.steps_seen = steps_before + n_step
        for p, ev in other_evs:
            if ev is not None and p > last_at:
                self.feed_event(ev)
        self.fast_chunks += 1
        return n_lines

    def _tail_fields(self, data: bytes, last_at: int, k: int) -> tuple:
        """``ts`` and ``loss`` of the k step lines before the last step line, oldest first (None: unreadable)."""
        last_start = data.rfind(b"\n", 0, last_at) + 1
        start = last_start
        for _ in range(k):                       # common case: the k lines before are all step lines
            if start == 0:
                break
            start = data.rfind(b"\n", 0, start - 1) + 1
        region = data[start:last_start]
        stamps = _TS_RE.findall(region)
        losses = _LOSS_RE.findall(region)
        if (len(stamps) == len(losses) == k and region.count(_STEP_TAG) == k and region.count(b"\n") == k):
            return [_to_float(x) for x in stamps], [_to_float(x) for x in losses]
        ts: List[Optional[float]] = []
        lv: List[Optional[float]] = []
        end = last_start - 1
        while end >= 0 and len(ts) < k:
            start = data.rfind(b"\n", 0, end) + 1
            line = data[start:end]
            if _STEP_TAG in line:
                ts.append(_search_float(_TS_RE, line))
                lv.append(_search_float(_LOSS_RE, line))
            end = start - 1
        ts.reverse()
        lv.reverse()
        pad = [None] * (k - len(ts))
        return pad + ts, pad + lv

    def feed_text(self, rec: Any) -> None:
        """Apply one TextRecord (monitoring.textlog) whose ``rank`` is set."""
        kind = getattr(rec, "kind", None)
        fields = getattr(rec, "fields", None) or {}
        if kind == "event":
            ev = fields.get("event")
            if isinstance(ev, dict):
                self.feed_event(ev)
            return
        if kind == "eval":
            self.eval_results.append(dict(fields))
            return
        rank = getattr(rec, "rank", None)
        if not isinstance(rank, int) or rank < 0:
            return
        d = self._dev(rank)
        s = d.state
        s.source = s.source or "text"
        if getattr(rec, "device", None) is not None:
            s.device = rec.device
        if s.state in ("unknown", "starting"):
            s.state = "running"
        if kind == "step":
            s.steps_seen += 1
            s.epoch = fields.get("epoch") or s.epoch
            s.step = fields.get("step") or s.step
            s.steps_per_epoch = fields.get("steps_per_epoch") or s.steps_per_epoch
            s.epochs = fields.get("epochs") or s.epochs
            st = fields.get("step_time_s")
            if s.source != "events":            # our own logs: the events say it
                s.global_step = fields.get("global_step")      # None: the lines do not say
            if st is not None and s.source != "events":   # MindFormers prints each step's time with its loss
                s.step_time_s = st
                d.pending.append(st)
                d.recent_steps.append((None, st))
            d.pending_loss.append(math.nan if fields.get("loss") is None else fields["loss"])
            if fields.get("loss") is not None:
                s.loss = fields["loss"]
                d.recent_loss.append((None, fields["loss"]))
        elif kind == "time":
            st = fields.get("step_time_s")
            s.epoch_time_s = fields.get("epoch_time_s")
            if st is not None:
                s.mean_step_time_s = st
                d.epoch_step_times.append((None, st))
                if s.source != "events":      # our own logs: per-step times come from the events
                    s.step_time_s = st
                    d.pending.append(st)
                    d.recent_steps.append((None, st))
        elif kind == "val":
            s.epoch = max(s.epoch, fields.get("epoch") or 0)
            if fields.get("val_loss") is not None:
                s.val_loss = fields["val_loss"]
        elif kind == "miou":
            epoch = fields.get("epoch")
            if epoch:
                s.epoch = max(s.epoch, epoch)
            self._miou(d, epoch, fields.get("miou"), fields.get("best_miou"))

    def touch(self, rank: int, ts: float) -> None:
        """A text source of ``rank`` changed at ``ts`` (its lines carry no time of their own)."""
        d = self.devices.get(rank)
        if d is not None and (d.state.last_event_ts is None or ts > d.state.last_event_ts):
            d.state.last_event_ts = ts

    def set_job_info(self, info: Any) -> None:
        """job.json as read; only what is recognised is used."""
        self.job_info = info if isinstance(info, dict) else {}
        job = self.job_info.get("job_id") or self.job_info.get("job") or self.job_info.get("id")
        if isinstance(job, str) and job and not self.job:
            self.job = job

    # ------------------------------------------------------------------ output
    def series(self, rank: int) -> Dict[str, list]:
        """Whole-run series of one rank for plots: step times and losses by step index, mIoU by epoch."""
        d = self.devices.get(rank)
        if d is None:
            return {"step_x": [], "step_time_s": [], "loss_x": [], "loss": [], "miou": [], "epoch_step_time_s": []}
        d.flush()
        return {"step_x": list(d.step_series.x), "step_time_s": list(d.step_series.y),
                "loss_x": list(d.loss_series.x), "loss": list(d.loss_series.y),
                "miou": list(d.state.miou_history), "epoch_step_time_s": list(d.epoch_step_times)}

    def snapshot(self, now: Optional[float] = None) -> JobSummary:
        now = time.time() if now is None else now
        info = self.job_info
        attempts = info.get("attempts") if isinstance(info.get("attempts"), list) else []
        job_state = info.get("state") if isinstance(info.get("state"), str) else None
        last_attempt = attempts[-1] if attempts and isinstance(attempts[-1], dict) else {}
        exit_codes = _exit_codes(last_attempt)
        failure = _failure(last_attempt)
        failed_rank = _int(failure.get("rank")) if failure else None
        devices: Dict[int, DeviceState] = {}
        for rank, d in sorted(self.devices.items()):
            d.flush()
            s = DeviceState.__new__(DeviceState)          # a shallow copy, cheaper than copy.copy
            s.__dict__.update(d.state.__dict__)
            # the histories are shared with the cache (replaced, never mutated, when data arrives):
            # readers must treat them as read-only
            s.step_time_history, s.loss_history = d.histories()
            s.miou_history = list(d.state.miou_history)
            (s.step_time_p50_s, s.step_time_p95_s, s.step_time_max_s,
             s.run_step_time_p50_s, s.run_step_time_p95_s, s.run_step_time_max_s) = d.stats()
            if s.last_event_ts is not None:
                s.last_event_age_s = max(0.0, now - s.last_event_ts)
            code = exit_codes.get(rank)
            if code is not None:
                s.exit_code = code
                if code != 0:
                    s.dead = True
                    if s.state not in ("finished",):
                        s.state = "failed"
            if failed_rank == rank and failure is not None:
                s.dead = True
                if s.state not in ("finished",):
                    s.state = "failed"
                if not s.error and isinstance(failure.get("message"), str):
                    s.error = failure["message"][:500]
            if s.state == "failed":
                s.dead = True
            if job_state in ("succeeded", "failed", "stopped") and s.state in ("starting", "running", "unknown"):
                s.state = "failed" if job_state == "failed" and s.dead else "stopped"
            stale = s.last_event_age_s is not None and s.last_event_age_s > self.stale_after_s
            if s.source == "text" and s.state == "running" and (stale or s.last_event_age_s is None):
                s.state = "unknown"          # plain logs do not say that they ended: only "not growing"
            elif s.state in ("starting", "running") and stale:
                s.stalled = True
            devices[rank] = s
        summary = JobSummary(job=self.job or str(info.get("job") or ""), straggler_margin=self.straggler_margin)
        summary.devices = devices
        summary.updated_ts = now
        summary.world_size = self.world_size or (len(devices) or None)
        summary.eval_results = list(self.eval_results)
        restarts = _int(info.get("restarts"), 0) or 0
        summary.restarts = max(self.max_attempt, len(attempts) - 1 if attempts else 0, restarts)
        summary.attempt = max(self.max_attempt, len(attempts) - 1 if attempts else 0)
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


def scan_chunk(data: bytes) -> Optional[tuple]:
    """The read-only part of the fast path over one chunk (no aggregator state: a worker process may run it).

    Returns ``(n_lines, n_step, newline positions, line indexes of non-step events, [(offset, parsed
    event)] of those, step times (float64 array), offset of the last step line, its parsed event,
    rank)`` or None when the chunk does not pass the structure checks (then it goes line by line).
    """
    if not data.endswith(b"\n") or not data.startswith(b"{"):
        return None
    buf = np.frombuffer(data, dtype=np.uint8)
    nl = np.flatnonzero(buf == 10)                      # every line is "{...}\n"
    n_lines = int(nl.size)
    if nl[0] == 0 or not (buf[nl - 1] == 125).all() or not (buf[nl[:-1] + 1] == 123).all():
        return None
    names = _EVENT_RE.findall(data)                       # one event name per line
    if len(names) != n_lines:
        return None
    n_step = names.count(b"step")
    if n_step < n_lines // 2:
        return None
    other_idx: List[int] = []
    if n_step != n_lines:
        for name in set(names):
            if name != b"step":
                i = -1
                try:
                    while True:
                        i = names.index(name, i + 1)
                        other_idx.append(i)
                except ValueError:
                    pass
        other_idx.sort()
    starts = np.empty(n_lines, dtype=np.int64)
    starts[0] = 0
    starts[1:] = nl[:-1] + 1
    others = [int(starts[i]) for i in other_idx]
    times = _STEP_TIME_RE.findall(data)
    if len(times) != n_step:
        return None
    last_idx = n_lines - 1 - names[::-1].index(b"step")
    last_at = int(starts[last_idx])
    last_ev = parse_line(_line_at(data, last_at))
    if last_ev is None or last_ev.get("event") != "step":
        return None
    if any(key in last_ev and _num(last_ev[key]) is None for key in _LAST_FIELDS):
        return None              # e.g. a null loss on the last line: the line path keeps the previous value
    rank = _int(last_ev.get("rank"))
    if rank is None or rank < 0:
        return None
    r = str(rank).encode()
    same_rank = data.count(b'"rank":' + r + b",")
    if same_rank != n_lines and same_rank + data.count(b'"rank":' + r + b"}") != n_lines:
        return None
    try:
        t = np.fromiter(map(float, times), np.float64, len(times))   # what astype(float64) does, faster
    except ValueError:
        return None
    other_evs = [(p, parse_line(_line_at(data, p))) for p in others]
    for (p, ev), i in zip(other_evs, other_idx):
        if ev is None or ev.get("event") != names[i].decode("utf-8", "replace") or _int(ev.get("rank")) != rank:
            return None                                   # not one plain event per line: go line by line
    return (n_lines, n_step, nl, other_idx, other_evs, t, last_at, last_ev, rank)


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


def _exit_codes(attempt: Dict[str, Any]) -> Dict[int, int]:
    """Per-rank exit codes of an attempt record of a checked job.json (``read_job_json``)."""
    return rank_exit_codes(attempt) if attempt else {}


def _failure(attempt: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    f = attempt.get("failure") if isinstance(attempt, dict) else None
    return f if isinstance(f, dict) else None


def _line_at(data: bytes, pos: int) -> bytes:
    start = data.rfind(b"\n", 0, pos) + 1
    end = data.find(b"\n", pos)
    return data[start:] if end < 0 else data[start:end]


def _to_float(text: bytes) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _search_float(pattern: "re.Pattern", data: bytes, pos: int = 0, endpos: Optional[int] = None) -> float:
    m = pattern.search(data, pos, len(data) if endpos is None else endpos)
    return _to_float(m.group(1)) if m else math.nan


def read_job_json(path: Any) -> Dict[str, Any]:
    """job.json checked against its schema, or {} when it is missing or does not follow it: monitoring
    then shows what the events say (never raises)."""
    try:
        return dict(load_job_json(path))
    except JobJsonError:
        return {}


class JobMonitor:
    """Owner loop of one job's inputs: finds the sources, tails them, feeds one Aggregator.

    ``paths``: a job directory, a folder of logs, or files (see monitoring.sources).  ``poll()``
    reads only bytes added since the last call (a truncated or replaced file is re-read from its
    start) and returns the number of new lines; sources that appear later (a rank starting late)
    are picked up by the next poll.
    """

    def __init__(self, paths: Sequence[Any], job: Optional[str] = None, discover: Any = None,
                 **agg_kwargs: Any) -> None:
        from monitoring.sources import discover as default_discover  # local: sources imports siblings only
        from monitoring.tailer import Tailer
        self.paths = [Path(p) for p in paths]
        self._discover = discover or default_discover      # e.g. summary's --devices reading
        self.aggregator = Aggregator(job=job or "", **agg_kwargs)
        self.tailer = Tailer()
        self.sources: Dict[Path, Any] = {}
        self._parsers: Dict[Path, Any] = {}
        self.job_json: Optional[Path] = None
        self.last_poll_bytes = 0      # bytes the last poll read (0: all sources consumed)
        self._sources_sig: Any = None     # what the folders looked like at the last discover()
        self._job_json_sig: Any = None    # (inode, size, mtime) of job.json when last read
        self.discoveries = 0              # discover() calls (tests: unchanged folders are not rescanned)
        self.parallel_min_bytes = PARALLEL_MIN_BYTES
        # worker processes for a backlog's scans; on 2 CPUs shared with other work they did not help
        self.workers = min(os.cpu_count() or 1, 4) if (os.cpu_count() or 1) >= 4 else 1
        self.parallel_chunks = 0          # chunks scanned by worker processes (tests and benchmarks)

    def _folders_signature(self) -> Any:
        """Identity and mtime of every folder discover() lists, or None when a rescan is needed anyway.

        Only job directories are cached (their sources are events/*.jsonl or logs/*.log, so the
        folders root, events/ and logs/ say whether a file came or went); loose folders and files are
        rediscovered on each poll.  A folder changed within the last second is not trusted (file
        system timestamps are coarse: a file created in the same tick would leave the mtime as is).
        """
        sig = []
        limit = time.time_ns() - 1_000_000_000
        for p in self.paths:
            for sub in (p, p / EVENTS_DIR, p / LOGS_DIR):
                try:
                    st = os.stat(sub)
                except OSError:
                    if sub is p:
                        return None
                    sig.append(None)
                    continue
                if st.st_mtime_ns > limit:
                    return None
                sig.append((st.st_ino, st.st_mtime_ns))
            if sig[-2] is None and not os.path.isfile(p / JOB_JSON):
                return None                   # not a job directory: a folder of logs, walked each poll
        return tuple(sig)

    def refresh_sources(self) -> None:
        sig = self._folders_signature()
        if sig is not None and sig == self._sources_sig:
            return
        self._sources_sig = sig
        self.discoveries += 1
        found = self._discover(self.paths)
        self.job_json = found.job_json
        if not self.aggregator.job and found.job:
            self.aggregator.job = found.job
        for src in found.sources:
            if src.path not in self.sources:
                self.sources[src.path] = src
                self.tailer.add(src.path)

    def poll(self) -> int:
        from monitoring.textlog import TextLogParser
        self.refresh_sources()
        if self.job_json is not None:
            try:
                st = os.stat(self.job_json)
                jsig = (st.st_ino, st.st_size, st.st_mtime_ns)
                if st.st_mtime_ns > time.time_ns() - 1_000_000_000:
                    jsig = None               # just written: read again next time (coarse mtimes)
            except OSError:
                jsig = None
            if jsig is None or jsig != self._job_json_sig:
                self.aggregator.set_job_info(read_job_json(self.job_json))
            self._job_json_sig = jsig
        lines = 0
        chunks = self.tailer.poll()
        self.last_poll_bytes = self.tailer.last_bytes
        scans = self._parallel_scans(chunks)
        for chunk in chunks:
            src = self.sources.get(chunk.path)
            if src is None:
                continue
            if chunk.reset:
                self._parsers.pop(chunk.path, None)
            if src.kind == "events":
                lines += self.aggregator.feed_event_chunk(chunk.data, scans.get(id(chunk.data), False))
                continue
            parser = self._parsers.get(chunk.path)
            if parser is None:
                parser = self._parsers[chunk.path] = TextLogParser(rank=src.rank, device=src.device,
                                                                      devices=src.devices)
            touched = set()
            for line in chunk.data.split(b"\n"):
                if not line:
                    continue
                lines += 1
                rec = parser.feed(line)
                if rec is not None:
                    self.aggregator.feed_text(rec)
                    if rec.rank is not None:
                        touched.add(rec.rank)
            for r in touched:
                self.aggregator.touch(r, chunk.mtime)
        return lines

    def _parallel_scans(self, chunks: List[Any]) -> Dict[int, Any]:
        """``scan_chunk`` of the big event chunks in forked worker processes: {id(data): scan}.

        Only for a backlog (two or more event chunks of at least ``parallel_min_bytes``), only where
        fork is safe (the main thread, no other threads: never inside the exporter's server) and
        only with two or more CPUs.  Any failure of the pool leaves the scans to the caller.
        """
        big = [c.data for c in chunks if len(c.data) >= self.parallel_min_bytes
               and getattr(self.sources.get(c.path), "kind", None) == "events"]
        workers = min(self.workers, len(big))
        if workers < 2 or threading.active_count() != 1 or threading.current_thread() is not threading.main_thread():
            return {}
        global _FORK_CHUNKS
        try:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor
            _FORK_CHUNKS = big
            # a worker that dies (e.g. out of memory) raises BrokenProcessPool here instead of hanging
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
                scans = list(pool.map(_scan_forked, range(len(big))))
        except Exception:  # noqa: BLE001 - no fork, no memory, a broken pool: scan here instead
            return {}
        finally:
            _FORK_CHUNKS = []
        self.parallel_chunks += len(big)
        return {id(data): scan for data, scan in zip(big, scans)}

    def summary(self, now: Optional[float] = None) -> JobSummary:
        return self.aggregator.snapshot(now)


#: The chunks a forked worker scans (inherited through fork, so the bytes are not pickled).
_FORK_CHUNKS: List[bytes] = []


def _scan_forked(i: int) -> Optional[tuple]:
    return scan_chunk(_FORK_CHUNKS[i])
