"""The exporter's metrics: four small prometheus_client collectors over one view of the jobs.

``Metrics(source, ...)`` registers a ``DeviceCollector``, ``ProcessCollector``, ``JobCollector`` and
``AcceleratorCollector`` in its own ``CollectorRegistry`` (``generate_latest(metrics.registry)``
works); ``metrics.render()`` writes the same families in the text format itself, byte for byte what
``generate_latest`` writes, several times faster (figures in docs/monitoring.md).  Each scrape takes
one ``View``: the job summaries, the live processes, npu-smi's chips and the time, read once.
The families, their labels and the rules for ``pspnet_up`` are listed in docs/metrics.md; a value
that is not known yet (no step seen, no validation yet) is left out rather than exported as 0.
"""
from __future__ import annotations

import math
import socket
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from prometheus_client.core import (CollectorRegistry, CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)

from cluster.contracts import states
from monitoring.aggregate import STEP_TIME_BUCKETS
from monitoring.state import DeviceState, JobSummary

DEVICE_STATES = tuple(s.value for s in states.DeviceState)
#: "unknown": a job known only from its ranks' logs, without a job.json
JOB_STATES = tuple(s.value for s in states.JobState) + ("unknown",)
_TERMINAL = frozenset(s.value for s in states.TERMINAL_DEVICE_STATES)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Without live process information a rank counts as up while it is not finished/failed/stopped and
#: its last event is at most this old.
DEFAULT_STALE_AFTER_S = 300.0

#: ``{rank: {"pid", "cpu_seconds", "rss_bytes"}}`` (keys may also be ``(job, rank)``)
ProcessStats = Mapping[Any, Mapping[str, Any]]
_DL = ("job", "host", "rank", "device")
_LES = tuple(repr(float(b)) for b in STEP_TIME_BUCKETS) + ("+Inf",)


class Family:
    """One metric family as a list of rows ``(label values, value)`` (histograms: ``(values, buckets, sum)``)."""
    __slots__ = ("name", "type", "doc", "labelnames", "rows")

    def __init__(self, name: str, typ: str, doc: str, labelnames: Sequence[str] = _DL) -> None:
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

    def metric(self) -> Metric:
        cls = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily}.get(self.type, HistogramMetricFamily)
        m = cls(self.name, self.doc, labels=list(self.labelnames))
        for row in self.rows:
            m.add_metric(list(row[0]), *row[1:])
        return m


class View(NamedTuple):
    """What one scrape shows, read once for every collector."""
    jobs: List[JobSummary]
    procs: ProcessStats
    live_known: bool          # process_stats decides pspnet_up for the hosts it covers
    chips: Any
    now: float


class _Collector:
    """A prometheus_client collector over ``metrics.view()``."""

    def __init__(self, metrics: "Metrics") -> None:
        self.metrics = metrics

    def describe(self) -> List[Metric]:
        return []      # registering must not read the job

    def collect(self) -> Iterator[Metric]:
        for fam in self.families(self.metrics.view()):
            yield fam.metric()

    def families(self, view: View) -> List[Family]:
        raise NotImplementedError


def _label_values(dev: DeviceState) -> Tuple[str, ...]:
    return (str(dev.job), str(dev.host or ""), str(dev.rank), "" if dev.device is None else str(dev.device))


class DeviceCollector(_Collector):
    GAUGES = (("step_time_s", "pspnet_step_time_seconds", "Duration of the last training step."),
              ("step_time_p50_s", "pspnet_step_time_p50_seconds", "Median step time over the recent window."),
              ("step_time_p95_s", "pspnet_step_time_p95_seconds", "95th percentile step time over the recent window."))
    MORE = (("images_per_s", "pspnet_images_per_second", "Training throughput of the device (images per second)."),
            ("loss", "pspnet_loss", "Training loss of the last step."),
            ("val_loss", "pspnet_val_loss", "Validation loss of the last validated epoch."),
            ("epoch", "pspnet_epoch", "Current epoch (1-based)."),
            ("global_step", "pspnet_global_step", "Global step of the last step record."))
    LAST = (("miou", "pspnet_miou_ratio", "mIoU of the last validation (0..1)."),
            ("best_miou", "pspnet_best_miou_ratio", "Best mIoU so far (0..1)."))

    def families(self, view: View) -> List[Family]:
        first = [Family(name, "gauge", doc) for _, name, doc in self.GAUGES]
        hist = Family("pspnet_step_duration_seconds", "histogram", "Training step durations seen by the exporter.")
        more = [Family(name, "gauge", doc) for _, name, doc in self.MORE]
        more.append(Family("pspnet_steps", "counter", "Step records seen for the device."))
        more += [Family(name, "gauge", doc) for _, name, doc in self.LAST]
        up = Family("pspnet_up", "gauge", "1 while the rank is alive (process running, or recent events), else 0.")
        age = Family("pspnet_last_event_age_seconds", "gauge", "Seconds since the device's last event.")
        strag = Family("pspnet_straggler", "gauge",
                       "1 when the device's p50 step time exceeds the median of the others by the job's margin.")
        dstate = Family("pspnet_device_state", "gauge", "Always 1; the state label carries the device's current state.",
                        _DL + ("state",))
        first_keys = [k for k, _, _ in self.GAUGES]
        more_keys = [k for k, _, _ in self.MORE] + ["steps_seen"] + [k for k, _, _ in self.LAST]
        first_rows = [f.rows for f in first]
        more_rows = [f.rows for f in more]
        is_up, now = self.metrics.is_up, view.now
        for job in view.jobs:
            for rank in sorted(job.devices):
                dev = job.devices[rank]
                lab = _label_values(dev)
                d = dev.__dict__
                for rows, key in zip(first_rows, first_keys):
                    v = d[key]
                    if v is not None and -math.inf < v < math.inf:
                        rows.append((lab, float(v)))
                if dev.step_time_buckets and sum(dev.step_time_buckets):
                    total, cum = 0, []
                    for le, c in zip(_LES, dev.step_time_buckets):
                        total += c
                        cum.append((le, total))
                    hist.rows.append((lab, cum, dev.step_time_sum_s))
                for rows, key in zip(more_rows, more_keys):
                    v = d[key]
                    if v is not None and -math.inf < v < math.inf and (v or key not in ("epoch", "global_step")):
                        rows.append((lab, float(v)))
                up.rows.append((lab, 1.0 if is_up(dev, view) else 0.0))
                if dev.last_event_ts is not None:
                    age.add(lab, max(0.0, now - dev.last_event_ts))
                strag.rows.append((lab, 1.0 if dev.straggler else 0.0))
                dstate.rows.append((lab + (dev.state if dev.state in DEVICE_STATES else "unknown",), 1.0))
        return first + [hist] + more + [up, age, strag, dstate]


class ProcessCollector(_Collector):
    def families(self, view: View) -> List[Family]:
        if self.metrics.process_stats is None:
            return []
        pl = ("job", "host", "rank")
        cpu = Family("pspnet_process_cpu_seconds", "counter", "CPU seconds used by the rank's process.", pl)
        rss = Family("pspnet_process_resident_memory_bytes", "gauge", "Resident memory of the rank's process.", pl)
        for index, job in enumerate(view.jobs):
            for rank in sorted(job.devices):
                p = view.procs.get((job.job, int(rank)))
                if p is None and index == 0:
                    p = view.procs.get(int(rank))
                if p:
                    lab = _label_values(job.devices[rank])[:3]
                    cpu.add(lab, p.get("cpu_seconds"))
                    rss.add(lab, p.get("rss_bytes"))
        return [cpu, rss]


class JobCollector(_Collector):
    def families(self, view: View) -> List[Family]:
        jl = ("job",)
        restarts = Family("pspnet_job_restarts", "counter", "Restarts of the job since it was launched.", jl)
        jstate = Family("pspnet_job_state", "gauge", "Job state, one-hot over the known states.", ("job", "state"))
        ranks = Family("pspnet_job_ranks", "gauge", "Ranks (devices) of the job.", jl)
        jips = Family("pspnet_job_images_per_second", "gauge", "Sum of the devices' images per second.", jl)
        jstrag = Family("pspnet_job_stragglers", "gauge", "Devices flagged as stragglers.", jl)
        jattempt = Family("pspnet_job_attempt", "gauge", "Current attempt (0 = first launch).", jl)
        for job in view.jobs:
            lab = (str(job.job),)
            restarts.add(lab, max(0, int(job.restarts or 0)))
            cur = job.state if job.state in JOB_STATES else "unknown"
            for s in JOB_STATES:
                jstate.add(lab + (s,), 1.0 if s == cur else 0.0)
            ranks.add(lab, len(job.devices))
            jips.add(lab, job.total_images_per_s)
            jstrag.add(lab, len(job.stragglers or ()))
            jattempt.add(lab, int(job.attempt or 0))
        return [restarts, jstate, ranks, jips, jstrag, jattempt]


class AcceleratorCollector(_Collector):
    """npu-smi figures per chip (``npu_reader`` returns cluster.npu_smi chips, or dicts with their field names)."""
    FIGURES = (("pspnet_npu_temperature_celsius", "Chip temperature.", "temp_c", 1.0),
               ("pspnet_npu_power_watts", "Power as npu-smi reports it (per card on some models).", "power_w", 1.0),
               ("pspnet_npu_aicore_utilization_ratio", "AI-core use (0..1).", "aicore_pct", 100.0),
               ("pspnet_npu_hbm_used_bytes", "HBM in use.", "hbm_used_mb", 2.0 ** -20),
               ("pspnet_npu_hbm_total_bytes", "HBM capacity.", "hbm_total_mb", 2.0 ** -20))

    def families(self, view: View) -> List[Family]:
        if not view.chips:
            return []
        nl = ("host", "npu", "chip", "device")
        health = Family("pspnet_npu_up", "gauge", "1 when npu-smi reports the chip's health as OK.", nl)
        figures = [Family(name, "gauge", doc, nl) for name, doc, _, _ in self.FIGURES]
        for chip in view.chips:
            get = chip.get if isinstance(chip, Mapping) else (lambda k, c=chip: getattr(c, k, None))
            dev = get("device_id")
            lab = (str(get("host") or self.metrics.host), _s(get("npu_id")), _s(get("chip_id")),
                   _s(get("phy_id") if dev is None else dev))
            if get("health") is not None:
                health.add(lab, 1.0 if str(get("health")).strip().upper() == "OK" else 0.0)
            for fam, (_, _, key, divisor) in zip(figures, self.FIGURES):
                v = _num(get(key))
                if v is not None:
                    fam.add(lab, v / divisor)
        return [health] + figures


class Metrics:
    """The collectors of one exporter, their registry, and the text rendering of a scrape.

    ``source()`` returns the current job summaries; ``process_stats()`` (optional, from the launcher)
    ``{rank: {"pid", "cpu_seconds", "rss_bytes"}}`` of live ranks of the first job (keys may also be
    ``(job, rank)``); ``npu_reader()`` (optional) npu-smi's chips or None.  A piece that raises is left
    out of that scrape; its error is kept in ``last_errors``.  ``pspnet_up``: with
    ``live_from_process_stats`` (the launcher) a rank is up when it is in ``process_stats()``, and down
    when it is not but runs on a host where listed ranks run; other ranks are up while not finished,
    failed or stopped and their last event is at most ``stale_after_s`` old.
    """

    def __init__(self, source: Callable[[], Iterable[JobSummary]], *,
                 process_stats: Optional[Callable[[], ProcessStats]] = None, live_from_process_stats: bool = True,
                 npu_reader: Optional[Callable[[], Any]] = None, stale_after_s: float = DEFAULT_STALE_AFTER_S,
                 host: Optional[str] = None, clock: Callable[[], float] = time.time) -> None:
        self.source, self.process_stats, self.npu_reader = source, process_stats, npu_reader
        self.live_from_process_stats = bool(live_from_process_stats)
        self.stale_after_s = float(stale_after_s)
        self.host = host or socket.gethostname()
        self.clock = clock
        self.last_errors: Dict[str, str] = {}
        self._local_hosts: set = set()     # host labels of ranks ever listed by process_stats
        self._labels: Dict[tuple, Dict[tuple, Any]] = {}   # label names -> label values -> rendered label strings
        self.collectors = [DeviceCollector(self), ProcessCollector(self), JobCollector(self),
                           AcceleratorCollector(self)]
        self.registry = CollectorRegistry(auto_describe=False)
        for c in self.collectors:
            self.registry.register(c)

    def _call(self, what: str, fn: Optional[Callable[[], Any]], default: Any) -> Any:
        if fn is None:
            return default
        try:
            return fn() or default
        except Exception as exc:  # noqa: BLE001 - a scrape must answer even when a piece fails
            self.last_errors[what] = f"{type(exc).__name__}: {exc}"
            return default

    def view(self) -> View:
        jobs = list(self._call("source", self.source, []))
        procs = self._call("process_stats", self.process_stats, {})
        live_known = self.process_stats is not None and self.live_from_process_stats
        if live_known and procs:
            for index, job in enumerate(jobs):
                for rank, dev in job.devices.items():
                    if (job.job, int(rank)) in procs or (index == 0 and int(rank) in procs):
                        self._local_hosts.add(dev.host)
        return View(jobs, procs, live_known, self._call("npu", self.npu_reader, None), self.clock())

    def is_up(self, dev: DeviceState, view: View) -> bool:
        if view.live_known:
            if int(dev.rank) in view.procs or (dev.job, int(dev.rank)) in view.procs:
                return True
            if dev.host in self._local_hosts:
                return False        # a rank of the launcher's own hosts without a live process: down
        if dev.state in _TERMINAL or dev.last_event_ts is None:
            return False
        return view.now - dev.last_event_ts <= self.stale_after_s

    def families(self, view: Optional[View] = None) -> List[Family]:
        view = self.view() if view is None else view
        return [f for c in self.collectors for f in c.families(view)]

    def render(self, families: Optional[List[Family]] = None) -> bytes:
        """The text exposition format (0.0.4) of one scrape, equal to ``generate_latest(self.registry)``.

        Label strings are kept per label values (the one cache here: devices keep their labels, and
        formatting them is much of what generate_latest spends per sample).
        """
        out: List[str] = []
        w = out.append
        for fam in self.families() if families is None else families:
            mname = fam.name + "_total" if fam.type == "counter" else fam.name
            doc = fam.doc.replace("\\", "\\\\").replace("\n", "\\n")
            w(f"# HELP {mname} {doc}\n# TYPE {mname} {fam.type}\n")
            names = fam.labelnames
            table = self._labels.setdefault(names, {})
            if len(table) > 100_000:          # labels that come and go (many short jobs): start over
                table.clear()
            if fam.type == "histogram":
                bname, cname, sname = fam.name + "_bucket", fam.name + "_count", fam.name + "_sum"
                for values, buckets, total in fam.rows:
                    les = tuple(le for le, _ in buckets)
                    got = table.get((values, les))
                    if got is None:
                        got = table[(values, les)] = (_labelstr(names, values), [
                            _labelstr(names + ("le",), values + (le,)) for le in les])
                    w("".join([f"{bname}{lstr} {_count(count)}\n" for lstr, (_, count) in zip(got[1], buckets)]))
                    w(f"{cname}{got[0]} {_count(buckets[-1][1])}\n{sname}{got[0]} {_go_float(float(total))}\n")
            else:
                for values, v in fam.rows:
                    lstr = table.get(values)
                    if lstr is None:
                        lstr = table[values] = _labelstr(names, values)
                    w(f"{mname}{lstr} {repr(v) if -1e300 < v < 1e6 else _go_float(v)}\n")
        return "".join(out).encode("utf-8")


def _labelstr(names: Sequence[str], values: Sequence[str]) -> str:
    pairs = sorted(zip(names, values))
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}" if pairs else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _go_float(d: float) -> str:
    """prometheus_client's float formatting (``floatToGoString``), so both renderings agree."""
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


def _count(c: Any) -> str:
    """``_go_float(float(c))`` of a bucket count, without the float round trip for the usual ones."""
    return f"{c}.0" if type(c) is int and 0 <= c < 1_000_000 else _go_float(float(c))


def _s(v: Any) -> str:
    return "" if v is None else str(v)


def _num(v: Any) -> Optional[float]:
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        return None
    return f if math.isfinite(f) else None
