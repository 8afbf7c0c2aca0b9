"""The exporter's metrics: four small prometheus_client collectors over one view of the jobs.

``Metrics(source, ...)`` registers a ``DeviceCollector``, ``ProcessCollector``, ``JobCollector`` and
``AcceleratorCollector`` in its own ``CollectorRegistry`` (``generate_latest(metrics.registry)``
works); ``metrics.render()`` writes the same families in the text format itself, byte for byte what
``generate_latest`` writes, several times faster (figures in docs/monitoring.md).  Each scrape takes
one ``View``: the job summaries, the live processes, npu-smi's chips and the time, read once.

Families (``pspnet_`` prefix, base units, ``_total`` for counters):

per device, labels ``job, host, rank, device``
    ``pspnet_step_time_seconds`` (last step), ``pspnet_step_time_p50_seconds`` / ``_p95_`` (sliding
    window), ``pspnet_step_duration_seconds`` (histogram of every step time of the events),
    ``pspnet_images_per_second``, ``pspnet_loss``, ``pspnet_val_loss``, ``pspnet_epoch``,
    ``pspnet_global_step``, ``pspnet_steps_total``, ``pspnet_miou_ratio``, ``pspnet_best_miou_ratio``,
    ``pspnet_up``, ``pspnet_last_event_age_seconds``, ``pspnet_straggler``, ``pspnet_device_state``
    (always 1; label ``state``, one of ``DEVICE_STATES``)
per rank process, labels ``job, host, rank`` (when ``process_stats`` is given)
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
    def families(self, view: View) -> List[Family]:
        g = lambda name, doc: Family(name, "gauge", doc)  # noqa: E731
        step_last = g("pspnet_step_time_seconds", "Duration of the last training step.")
        step_p50 = g("pspnet_step_time_p50_seconds", "Median step time over the recent window.")
        step_p95 = g("pspnet_step_time_p95_seconds", "95th percentile step time over the recent window.")
        hist = Family("pspnet_step_duration_seconds", "histogram", "Training step durations seen by the exporter.")
        ips = g("pspnet_images_per_second", "Training throughput of the device (images per second).")
        loss = g("pspnet_loss", "Training loss of the last step.")
        val_loss = g("pspnet_val_loss", "Validation loss of the last validated epoch.")
        epoch = g("pspnet_epoch", "Current epoch (1-based).")
        gstep = g("pspnet_global_step", "Global step of the last step record.")
        steps = Family("pspnet_steps", "counter", "Step records seen for the device.")
        miou = g("pspnet_miou_ratio", "mIoU of the last validation (0..1).")
        best = g("pspnet_best_miou_ratio", "Best mIoU so far (0..1).")
        up = g("pspnet_up", "1 while the rank is alive (process running, or recent events), else 0.")
        age = g("pspnet_last_event_age_seconds", "Seconds since the device's last event.")
        strag = g("pspnet_straggler",
                  "1 when the device's p50 step time exceeds the median of the others by the job's margin.")
        dstate = Family("pspnet_device_state", "gauge", "Always 1; the state label carries the device's current state.",
                        _DL + ("state",))
        is_up = self.metrics.is_up
        for job in view.jobs:
            for rank in sorted(job.devices):
                dev = job.devices[rank]
                lab = _label_values(dev)
                step_last.add(lab, dev.step_time_s)
                step_p50.add(lab, dev.step_time_p50_s)
                step_p95.add(lab, dev.step_time_p95_s)
                if dev.step_time_buckets and sum(dev.step_time_buckets):
                    cum, total = [], 0
                    for le, c in zip(_LES, dev.step_time_buckets):
                        total += c
                        cum.append((le, total))
                    hist.rows.append((lab, cum, dev.step_time_sum_s))
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
                up.add(lab, 1.0 if is_up(dev, view) else 0.0)
                if dev.last_event_ts is not None:
                    age.add(lab, max(0.0, view.now - dev.last_event_ts))
                strag.add(lab, 1.0 if dev.straggler else 0.0)
                dstate.add(lab + (dev.state if dev.state in DEVICE_STATES else "unknown",), 1.0)
        return [step_last, step_p50, step_p95, hist, ips, loss, val_loss, epoch, gstep, steps, miou, best, up,
                age, strag, dstate]


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

    def families(self, view: View) -> List[Family]:
        if not view.chips:
            return []
        nl = ("host", "npu", "chip", "device")
        health = Family("pspnet_npu_up", "gauge", "1 when npu-smi reports the chip's health as OK.", nl)
        temp = Family("pspnet_npu_temperature_celsius", "gauge", "Chip temperature.", nl)
        power = Family("pspnet_npu_power_watts", "gauge", "Power as npu-smi reports it (per card on some models).", nl)
        aicore = Family("pspnet_npu_aicore_utilization_ratio", "gauge", "AI-core use (0..1).", nl)
        hbm_used = Family("pspnet_npu_hbm_used_bytes", "gauge", "HBM in use.", nl)
        hbm_total = Family("pspnet_npu_hbm_total_bytes", "gauge", "HBM capacity.", nl)
        for chip in view.chips:
            get = chip.get if isinstance(chip, Mapping) else (lambda k, c=chip: getattr(c, k, None))
            dev = get("device_id")
            dev = get("phy_id") if dev is None else dev
            lab = (str(get("host") or self.metrics.host), _s(get("npu_id")), _s(get("chip_id")), _s(dev))
            if get("health") is not None:
                health.add(lab, 1.0 if str(get("health")).strip().upper() == "OK" else 0.0)
            temp.add(lab, get("temp_c"))
            power.add(lab, get("power_w"))
            for fam, key, scale in ((aicore, "aicore_pct", 1 / 100.0), (hbm_used, "hbm_used_mb", 2.0 ** 20),
                                    (hbm_total, "hbm_total_mb", 2.0 ** 20)):
                v = _num(get(key))
                if v is not None:
                    fam.add(lab, v / 100.0 if fam is aicore else v * scale)
        return [health, temp, power, aicore, hbm_used, hbm_total]


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
        self._labels: Dict[tuple, tuple] = {}   # label values -> rendered label strings
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
        formatting them is most of what generate_latest spends per sample).
        """
        out: List[str] = []
        w = out.append
        for fam in self.families() if families is None else families:
            mname = fam.name + "_total" if fam.type == "counter" else fam.name
            doc = fam.doc.replace("\\", "\\\\").replace("\n", "\\n")
            w(f"# HELP {mname} {doc}\n# TYPE {mname} {fam.type}\n")
            names = fam.labelnames
            if fam.type == "histogram":
                bname, cname, sname = fam.name + "_bucket", fam.name + "_count", fam.name + "_sum"
                for values, buckets, total in fam.rows:
                    plain, les = self._labelstr(names, values, [le for le, _ in buckets])
                    for lstr, (_, count) in zip(les, buckets):
                        w(f"{bname}{lstr} {_go_float(float(count))}\n")
                    w(f"{cname}{plain} {_go_float(float(buckets[-1][1]))}\n{sname}{plain} {_go_float(float(total))}\n")
            else:
                for values, v in fam.rows:
                    w(f"{mname}{self._labelstr(names, values)[0]} {_go_float(v)}\n")
        return "".join(out).encode("utf-8")

    def _labelstr(self, names: Tuple[str, ...], values: Tuple[str, ...], les: Sequence[str] = ()) -> tuple:
        key = (names, values, tuple(les))
        got = self._labels.get(key)
        if got is None:
            def fmt(pairs: List[Tuple[str, str]]) -> str:
                pairs.sort()
                return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}" if pairs else ""
            plain = list(zip(names, values))
            got = (fmt(list(plain)), [fmt(plain + [("le", le)]) for le in les])
            if len(self._labels) >= 100_000:      # labels that come and go (many short jobs): start over
                self._labels.clear()
            self._labels[key] = got
        return got


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
