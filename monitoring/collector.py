"""A custom prometheus_client Collector over the aggregated monitoring state.

Nothing is pushed into global metric objects: on every scrape ``PspnetCollector.collect()`` asks its
source for the current ``JobSummary`` objects (the source refreshes incrementally: it reads only the
bytes appended since the last call) and yields metric families built from them.  A scrape therefore
always shows current state and costs one incremental read plus the formatting.

Families (``pspnet_`` prefix, base units, ``_total`` for counters):

per device, labels ``job, host, rank, device``
    ``pspnet_step_time_seconds`` (last step), ``pspnet_step_time_p50_seconds`` / ``_p95_`` (sliding
    window), ``pspnet_step_duration_seconds`` (histogram of every step time seen), ``pspnet_images_per_second``,
    ``pspnet_loss``, ``pspnet_val_loss``, ``pspnet_epoch``, ``pspnet_global_step``, ``pspnet_steps_total``,
    ``pspnet_miou_ratio``, ``pspnet_best_miou_ratio``, ``pspnet_up``, ``pspnet_last_event_age_seconds``,
    ``pspnet_straggler``, ``pspnet_device_state`` (always 1; label ``state``, one of ``DEVICE_STATES``)
per rank process, labels ``job, host, rank`` (when ``process_stats`` is given: the launcher's live
ranks, or ``LocalProcessStats`` for ranks of this host in standalone mode)
    ``pspnet_process_cpu_seconds_total``, ``pspnet_process_resident_memory_bytes``
per job, label ``job``
    ``pspnet_job_restarts_total``, ``pspnet_job_state`` (one-hot over ``JOB_STATES``), ``pspnet_job_ranks``,
    ``pspnet_job_images_per_second``, ``pspnet_job_stragglers``, ``pspnet_job_attempt``
per NPU chip, labels ``host, npu, chip, device`` (device = physical id; only where ``npu-smi`` answers)
    ``pspnet_npu_up`` (health OK), ``pspnet_npu_temperature_celsius``, ``pspnet_npu_power_watts``,
    ``pspnet_npu_aicore_utilization_ratio``, ``pspnet_npu_hbm_used_bytes``, ``pspnet_npu_hbm_total_bytes``

A value that is not known yet (no step seen, no validation yet) is left out rather than exported as 0.
"""
from __future__ import annotations

import bisect
import math
import socket
import threading
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                    Metric)

from cluster.contracts import states
from monitoring.state import DeviceState, JobSummary

#: Upper bounds (seconds) of the step-time histogram.  PSPNet steps take ~0.3-1.5 s on Ascend and
#: 0.05-30 s on CPU; the buckets cover both with roughly 2x spacing.
STEP_TIME_BUCKETS: Tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

DEVICE_STATES = tuple(s.value for s in states.DeviceState)
#: "unknown": a job known only from its ranks' logs, without a job.json
JOB_STATES = tuple(s.value for s in states.JobState) + ("unknown",)
_TERMINAL = frozenset(s.value for s in states.TERMINAL_DEVICE_STATES)

#: Without live process information a rank counts as up while it is not finished/failed/stopped and
#: its last event is at most this old.
DEFAULT_STALE_AFTER_S = 300.0

#: ``{rank: {"pid", "cpu_seconds", "rss_bytes"}}`` (keys may also be ``(job, rank)``)
ProcessStats = Mapping[Any, Mapping[str, Any]]


# ------------------------------------------------------------------ step-time histograms

class StepTimeHistograms:
    """Cumulative step-time bucket counts per (job, rank), kept by the collector.

    Fed either one observation at a time (``observe``; an aggregator may call it for each step record)
    or, when nobody does, from each device's bounded ``step_time_history``: entries with an event
    timestamp newer than the newest one taken are added on the next scrape.  A rank whose attempt changes keeps its counts
    (a counter-like family must never go down while the exporter runs).
    """

    def __init__(self, buckets: Sequence[float] = STEP_TIME_BUCKETS) -> None:
        self.bounds = tuple(float(b) for b in buckets)
        self._les = tuple(_le(b) for b in self.bounds) + ("+Inf",)
        self._counts: Dict[Tuple[str, int], List[int]] = {}
        self._sums: Dict[Tuple[str, int], float] = {}
        self._last_ts: Dict[Tuple[str, int], float] = {}
        self._fed_directly: set = set()
        self._cum: Dict[Tuple[str, int], Tuple[List[Tuple[str, float]], float]] = {}   # buckets() results until _add
        self._lock = threading.Lock()

    def observe(self, job: str, rank: int, value: float) -> None:
        """Add one step time (seconds)."""
        key = (job, int(rank))
        with self._lock:
            self._fed_directly.add(key)
            self._add(key, value)

    def _add(self, key: Tuple[str, int], value: Any) -> None:
        try:
            v = float(value)
        except (TypeError, ValueError):
            return
        if not math.isfinite(v) or v < 0:
            return
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = [0] * (len(self.bounds) + 1)
            self._sums[key] = 0.0
        counts[bisect.bisect_left(self.bounds, v)] += 1
        self._sums[key] += v
        self._cum.pop(key, None)

    def update_from(self, dev: DeviceState) -> None:
        """Take the entries of ``dev.step_time_history`` newer than the newest one taken.

        The history is a bounded list of ``(ts, seconds)`` in arrival order; each snapshot may hand
        out a fresh copy, so entries are told apart by their event timestamp.  Entries without one
        (text-log records: TimeMonitor's per-epoch mean "per step time", not single steps) are not
        counted.  When more steps arrived between two scrapes than the history holds, the
        older ones are missed (the gauges and percentiles still include them).
        """
        key = (dev.job, int(dev.rank))
        hist = dev.step_time_history
        if not hist or key in self._fed_directly:
            return
        with self._lock:
            last = self._last_ts.get(key)
            i = len(hist)
            newest = None
            while i > 0:
                ts = hist[i - 1][0]
                if isinstance(ts, (int, float)):
                    if last is not None and ts <= last:
                        break
                    if newest is None:
                        newest = ts
                i -= 1
            if newest is None:
                return
            for ts, value in hist[i:]:
                if isinstance(ts, (int, float)):
                    self._add(key, value)
            self._last_ts[key] = newest

    def buckets(self, job: str, rank: int) -> Optional[Tuple[List[Tuple[str, float]], float]]:
        """``([(le, cumulative count), ...], sum)`` for HistogramMetricFamily, or None when empty."""
        key = (job, int(rank))
        with self._lock:
            got = self._cum.get(key)
            if got is not None:
                return list(got[0]), got[1]
            counts = self._counts.get(key)
            if counts is None:
                return None
            total = 0
            out = []
            for le, c in zip(self._les, counts):
                total += c
                out.append((le, total))
            self._cum[key] = (out, self._sums[key])
            return list(out), self._sums[key]


def _le(bound: float) -> str:
    return repr(float(bound))


# ------------------------------------------------------------------ families

class Family:
    """One metric family as the collector builds it: a light, ordered list of rows.

    Rows are ``(label_values, value)`` for gauges and counters and ``(label_values, buckets, sum)``
    for histograms, label values in ``labelnames`` order.  ``to_metric()`` turns it into a
    prometheus_client family (what the Collector protocol yields); ``TextRenderer.render`` writes the same
    families straight into the text exposition format, much faster than ``generate_latest``
    (which sorts and escapes every label of every sample) and byte-for-byte equal to it.
    """
    __slots__ = ("name", "type", "doc", "labelnames", "rows")

    def __init__(self, name: str, typ: str, doc: str, labelnames: Sequence[str]) -> None:
        self.name = name            # counters: without the ``_total`` suffix, as prometheus_client wants
        self.type = typ             # gauge | counter | histogram
        self.doc = doc
        self.labelnames = tuple(labelnames)
        self.rows: List[tuple] = []

    def add(self, values: Tuple[str, ...], value: Any) -> None:
        """Add a sample when ``value`` is a finite number; unknown values are left out."""
        f = _num(value)
        if f is not None:
            self.rows.append((values, f))

    def to_metric(self) -> Metric:
        names = list(self.labelnames)
        if self.type == "gauge":
            m = GaugeMetricFamily(self.name, self.doc, labels=names)
            for values, v in self.rows:
                m.add_metric(list(values), v)
        elif self.type == "counter":
            m = CounterMetricFamily(self.name, self.doc, labels=names)
            for values, v in self.rows:
                m.add_metric(list(values), v)
        else:
            m = HistogramMetricFamily(self.name, self.doc, labels=names)
            for values, buckets, total in self.rows:
                m.add_metric(list(values), buckets, total)
        return m


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _go_float(d: float) -> str:
    """Float formatting of prometheus_client (``floatToGoString``), so both renderings agree."""
    if -1e300 < d < 1e6:        # the usual case: finite, below 1e6 (no exponent rewrite)
        return repr(d)
    if d != d:
        return "NaN"
    if d == math.inf:
        return "+Inf"
    if d == -math.inf:
        return "-Inf"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def _count_str(c: Any) -> str:
    """``_go_float(float(c))`` for a bucket count, fast for the usual small integers."""
    if type(c) is int and 0 <= c < 1_000_000:
        return f"{c}.0"
    return _go_float(float(c))


class TextRenderer:
    """Writes families in the Prometheus text format (0.0.4) with cached label strings."""

    CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self, max_cache: int = 200_000) -> None:
        self._cache: Dict[tuple, str] = {}
        self._max_cache = max_cache
        self._prefixes: Dict[tuple, Dict[tuple, tuple]] = {}  # (name, label names) -> label values -> last rendering
        self._n_prefixes = 0

    def _prefix_table(self, mname: tuple) -> Dict[tuple, tuple]:
        if self._n_prefixes >= self._max_cache:
            self._prefixes.clear()
            self._n_prefixes = 0
        table = self._prefixes.get(mname)
        if table is None:
            table = self._prefixes[mname] = {}
        return table

    def _labelstr(self, names: Tuple[str, ...], values: Tuple[str, ...], extra: Optional[Tuple[str, str]] = None) -> str:
        key = (names, values, extra)
        s = self._cache.get(key)
        if s is None:
            pairs = list(zip(names, values))
            if extra is not None:
                pairs.append(extra)
            pairs.sort()
            s = "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}" if pairs else ""
            if len(self._cache) >= self._max_cache:
                self._cache.clear()
            self._cache[key] = s
        return s

    def _bucket_labelstrs(self, names: Tuple[str, ...], values: Tuple[str, ...], buckets: list) -> List[str]:
        les = tuple(le for le, _ in buckets)
        key = (names, values, les)
        got = self._cache.get(key)
        if got is None:
            got = [self._labelstr(names, values, ("le", le)) for le in les]
            self._cache[key] = got    # type: ignore[assignment]
        return got                    # type: ignore[return-value]

    def render(self, families: Iterable[Family]) -> bytes:
        out: List[str] = []
        w = out.append
        ls = self._labelstr
        for fam in families:
            mname = fam.name + "_total" if fam.type == "counter" else fam.name
            doc = fam.doc.replace("\\", "\\\\").replace("\n", "\\n")
            w(f"# HELP {mname} {doc}\n# TYPE {mname} {fam.type}\n")
            names = fam.labelnames
            if fam.type == "histogram":
                bname, sname, cname = fam.name + "_bucket", fam.name + "_sum", fam.name + "_count"
                bls = self._bucket_labelstrs
                table = self._prefix_table((fam.name, names))    # values -> (buckets, sum, rendered block)
                for values, buckets, total in fam.rows:
                    got = table.get(values)
                    if got is not None and got[1] == total and got[0] == buckets:
                        w(got[2])                    # a device without new steps: the same block
                        continue
                    block = [f"{bname}{lstr} {_count_str(count)}\n"
                             for lstr, (_, count) in zip(bls(names, values, buckets), buckets)]
                    plain = ls(names, values)
                    block.append(f"{cname}{plain} {_count_str(buckets[-1][1])}\n{sname}{plain} {_go_float(float(total))}\n")
                    text = "".join(block)
                    if got is None:
                        self._n_prefixes += 1
                    table[values] = (list(buckets), total, text)
                    w(text)
            else:
                table = self._prefix_table((mname, names))    # values -> (prefix, last value, last line)
                get = table.get
                for values, v in fam.rows:
                    got = get(values)
                    if got is not None and got[1] == v and v != 0.0:     # (0.0 == -0.0, rendered differently)
                        w(got[2])
                        continue
                    if got is None:
                        prefix = f"{mname}{ls(names, values)} "
                        self._n_prefixes += 1
                    else:
                        prefix = got[0]
                    line = f"{prefix}{_go_float(v)}\n"
                    table[values] = (prefix, v, line)
                    w(line)
        return "".join(out).encode("utf-8")


# ------------------------------------------------------------------ the collector

class PspnetCollector:
    """Yields the ``pspnet_*`` families of every job its source knows, on each scrape.

    ``source()`` returns the current job summaries (refreshing them incrementally); ``process_stats()``
    (optional, from the launcher) returns ``{rank: {"pid", "cpu_seconds", "rss_bytes"}}`` for live
    ranks of the first job (keys may also be ``(job, rank)``); ``npu_reader()`` (optional) returns parsed ``npu-smi info`` chips or None.
    Any piece that raises is skipped for that scrape; the error is kept in ``last_errors``.
    ``pspnet_up``: with ``live_from_process_stats`` (the launcher, which knows its local ranks'
    processes) a rank is up when it is in ``process_stats()``, and down when it is not but runs on a
    host where listed ranks run; ranks of other hosts, and every rank without process information,
    are up while not finished, failed or stopped and their last event is at most ``stale_after_s`` old.

    ``collect()`` is the prometheus_client Collector protocol; ``families()`` gives the same data as
    light ``Family`` objects for ``TextRenderer`` (the exporter's fast /metrics path).
    """

    def __init__(self, source: Callable[[], Iterable[JobSummary]], *,
                 process_stats: Optional[Callable[[], ProcessStats]] = None,
                 live_from_process_stats: bool = True,
                 npu_reader: Optional[Callable[[], Any]] = None,
                 histograms: Optional[StepTimeHistograms] = None,
                 stale_after_s: float = DEFAULT_STALE_AFTER_S,
                 host: Optional[str] = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self.process_stats = process_stats
        self.live_from_process_stats = bool(live_from_process_stats)
        self.npu_reader = npu_reader
        self.histograms = histograms or StepTimeHistograms()
        self.stale_after_s = float(stale_after_s)
        self.host = host or socket.gethostname()
        self.clock = clock
        self.last_errors: Dict[str, str] = {}
        self._label_cache: Dict[tuple, Tuple[str, ...]] = {}
        self._local_hosts: set = set()     # host labels of ranks ever listed by process_stats

    def describe(self) -> List[Metric]:
        # Registering must not trigger a scrape (that would read the job dir at registration time).
        return []

    def collect(self) -> Iterator[Metric]:
        for fam in self.families():
            yield fam.to_metric()

    # -- pieces

    def _jobs(self) -> List[JobSummary]:
        try:
            return list(self.source())
        except Exception as exc:  # noqa: BLE001 - a scrape must answer even when a piece fails
            self.last_errors["source"] = f"{type(exc).__name__}: {exc}"
            return []

    def _procs(self) -> ProcessStats:
        if self.process_stats is None:
            return {}
        try:
            return self.process_stats() or {}
        except Exception as exc:  # noqa: BLE001
            self.last_errors["process_stats"] = f"{type(exc).__name__}: {exc}"
            return {}

    def _labels(self, dev: DeviceState) -> Tuple[str, ...]:
        key = (dev.job, dev.host, dev.rank, dev.device)
        labels = self._label_cache.get(key)
        if labels is None:
            labels = (str(dev.job), str(dev.host or ""), str(dev.rank), "" if dev.device is None else str(dev.device))
            if len(self._label_cache) > 100_000:
                self._label_cache.clear()
            self._label_cache[key] = labels
        return labels

    def is_up(self, dev: DeviceState, procs: ProcessStats, now: float, live_known: bool) -> bool:
        if live_known:
            if int(dev.rank) in procs or (dev.job, int(dev.rank)) in procs:
                return True
            if dev.host in self._local_hosts:
                return False        # a rank of the launcher's own hosts without a live process: down
            # a rank on another host (the launcher's process table covers its local ranks only)
        if dev.state in _TERMINAL or dev.last_event_ts is None:
            return False
        return now - dev.last_event_ts <= self.stale_after_s

    # -- families

    def families(self) -> List[Family]:
        jobs = self._jobs()
        procs = self._procs()
        has_procs = self.process_stats is not None
        live_known = has_procs and self.live_from_process_stats
        now = self.clock()
        dl = ("job", "host", "rank", "device")

        def g(name: str, doc: str) -> Family:
            return Family(name, "gauge", doc, dl)

        step_last = g("pspnet_step_time_seconds", "Duration of the last training step.")
        step_p50 = g("pspnet_step_time_p50_seconds", "Median step time over the recent window.")
        step_p95 = g("pspnet_step_time_p95_seconds", "95th percentile step time over the recent window.")
        step_hist = Family("pspnet_step_duration_seconds", "histogram",
                           "Training step durations seen by the exporter.", dl)
        ips = g("pspnet_images_per_second", "Training throughput of the device (images per second).")
        loss = g("pspnet_loss", "Training loss of the last step.")
        val_loss = g("pspnet_val_loss", "Validation loss of the last validated epoch.")
        epoch = g("pspnet_epoch", "Current epoch (1-based).")
        gstep = g("pspnet_global_step", "Global step of the last step record.")
        steps = Family("pspnet_steps", "counter", "Step records seen for the device.", dl)
        miou = g("pspnet_miou_ratio", "mIoU of the last validation (0..1).")
        best = g("pspnet_best_miou_ratio", "Best mIoU so far (0..1).")
        up = g("pspnet_up", "1 while the rank is alive (process running, or recent events), else 0.")
        age = g("pspnet_last_event_age_seconds", "Seconds since the device's last event.")
        strag = g("pspnet_straggler",
                  "1 when the device's p50 step time exceeds the median of the others by the job's margin.")
        dstate = Family("pspnet_device_state", "gauge",
                        "Always 1; the state label carries the device's current state.", dl + ("state",))
        pl = ("job", "host", "rank")
        cpu = Family("pspnet_process_cpu_seconds", "counter", "CPU seconds used by the rank's process.", pl)
        rss = Family("pspnet_process_resident_memory_bytes", "gauge", "Resident memory of the rank's process.", pl)
        jl_names = ("job",)
        restarts = Family("pspnet_job_restarts", "counter", "Restarts of the job since it was launched.", jl_names)
        jstate = Family("pspnet_job_state", "gauge", "Job state, one-hot over the known states.", ("job", "state"))
        ranks = Family("pspnet_job_ranks", "gauge", "Ranks (devices) of the job.", jl_names)
        jips = Family("pspnet_job_images_per_second", "gauge", "Sum of the devices' images per second.", jl_names)
        jstrag = Family("pspnet_job_stragglers", "gauge", "Devices flagged as stragglers.", jl_names)
        jattempt = Family("pspnet_job_attempt", "gauge", "Current attempt (0 = first launch).", jl_names)

        if live_known and procs:
            for index, job in enumerate(jobs):
                for rank, dev in job.devices.items():
                    if (job.job, int(rank)) in procs or (index == 0 and int(rank) in procs):
                        self._local_hosts.add(dev.host)
        hists = self.histograms
        for index, job in enumerate(jobs):
            first = index == 0
            jl = (str(job.job),)
            for rank in sorted(job.devices):
                dev = job.devices[rank]
                lab = self._labels(dev)
                step_last.add(lab, dev.step_time_s)
                step_p50.add(lab, dev.step_time_p50_s)
                step_p95.add(lab, dev.step_time_p95_s)
                hists.update_from(dev)
                hb = hists.buckets(dev.job, dev.rank)
                if hb is not None:
                    step_hist.rows.append((lab, hb[0], hb[1]))
                ips.add(lab, dev.images_per_s)
                loss.add(lab, dev.loss)
                val_loss.add(lab, dev.val_loss)
                if dev.epoch:
                    epoch.add(lab, dev.epoch)
                if dev.global_step:
                    gstep.add(lab, dev.global_step)
                steps.add(lab, dev.steps_seen)
                miou.add(lab, dev.miou)
                best.add(lab, dev.best_miou)
                up.add(lab, 1.0 if self.is_up(dev, procs, now, live_known) else 0.0)
                if dev.last_event_ts is not None:
                    age.add(lab, max(0.0, now - dev.last_event_ts))
                strag.add(lab, 1.0 if dev.straggler else 0.0)
                dstate.add(lab + (dev.state if dev.state in DEVICE_STATES else "unknown",), 1.0)
                p = None
                if has_procs:
                    p = procs.get((job.job, int(rank)))
                    if p is None and first:
                        p = procs.get(int(rank))
                if p:
                    cpu.add(lab[:3], p.get("cpu_seconds"))
                    rss.add(lab[:3], p.get("rss_bytes"))
            restarts.add(jl, max(0, int(job.restarts or 0)))
            cur = job.state if job.state in JOB_STATES else "unknown"
            for s in JOB_STATES:
                jstate.add(jl + (s,), 1.0 if s == cur else 0.0)
            ranks.add(jl, len(job.devices))
            jips.add(jl, job.total_images_per_s)
            jstrag.add(jl, len(job.stragglers or ()))
            jattempt.add(jl, int(job.attempt or 0))

        fams = [step_last, step_p50, step_p95, step_hist, ips, loss, val_loss, epoch, gstep, steps, miou,
                best, up, age, strag, dstate]
        if has_procs:
            fams += [cpu, rss]
        fams += [restarts, jstate, ranks, jips, jstrag, jattempt]
        fams += self._npu_families()
        return fams

    # -- npu-smi

    def _npu_families(self) -> List[Family]:
        if self.npu_reader is None:
            return []
        try:
            chips = self.npu_reader()
        except Exception as exc:  # noqa: BLE001
            self.last_errors["npu"] = f"{type(exc).__name__}: {exc}"
            return []
        if not chips:
            return []
        nl = ("host", "npu", "chip", "device")
        health = Family("pspnet_npu_up", "gauge", "1 when npu-smi reports the chip's health as OK.", nl)
        temp = Family("pspnet_npu_temperature_celsius", "gauge", "Chip temperature.", nl)
        power = Family("pspnet_npu_power_watts", "gauge", "Power as npu-smi reports it (per card on some models).", nl)
        aicore = Family("pspnet_npu_aicore_utilization_ratio", "gauge", "AI-core use (0..1).", nl)
        hbm_used = Family("pspnet_npu_hbm_used_bytes", "gauge", "HBM in use.", nl)
        hbm_total = Family("pspnet_npu_hbm_total_bytes", "gauge", "HBM capacity.", nl)
        for chip in chips:
            f = npu_fields(chip)
            lab = (str(f.get("host") or self.host), _s(f.get("npu")), _s(f.get("chip")), _s(f.get("device")))
            h = f.get("health")
            if h is not None:
                health.add(lab, 1.0 if str(h).strip().upper() == "OK" else 0.0)
            temp.add(lab, f.get("temperature_c"))
            power.add(lab, f.get("power_w"))
            a = _num(f.get("aicore_percent"))
            if a is not None:
                aicore.add(lab, a / 100.0)
            u = _num(f.get("hbm_used_mb"))
            if u is not None:
                hbm_used.add(lab, u * 1024 * 1024)
            t = _num(f.get("hbm_total_mb"))
            if t is not None:
                hbm_total.add(lab, t * 1024 * 1024)
        return [health, temp, power, aicore, hbm_used, hbm_total]


#: Accepted spellings of each npu-smi field (attribute or key of what the reader returns).
_NPU_ALIASES = {
    "npu": ("npu_id", "npu", "card"),
    "chip": ("chip_id", "chip"),
    "device": ("device_id", "phy_id", "device"),
    "host": ("host",),
    "health": ("health",),
    "temperature_c": ("temp_c", "temperature_c", "temperature"),
    "power_w": ("power_w", "power"),
    "aicore_percent": ("aicore_pct", "aicore_percent", "aicore"),
    "hbm_used_mb": ("hbm_used_mb", "hbm_usage_mb"),
    "hbm_total_mb": ("hbm_total_mb", "hbm_mb"),
}


def npu_fields(chip: Any) -> Dict[str, Any]:
    """Normalise one chip record (a dataclass-like object or a dict) to the names used above."""
    out: Dict[str, Any] = {}
    get = chip.get if isinstance(chip, Mapping) else (lambda k, d=None: getattr(chip, k, d))
    for name, aliases in _NPU_ALIASES.items():
        for a in aliases:
            v = get(a, None)
            if v is not None:
                out[name] = v
                break
    return out


def _s(v: Any) -> str:
    return "" if v is None else str(v)


def _num(v: Any) -> Optional[float]:
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None
