"""The exporter: an HTTP server with /metrics (Prometheus), / (the web dashboard) and /api/state (JSON).

Started by the launcher in a background thread, fed in memory with the event lines the launcher
reads from its ranks (``exporter.sink`` is a console-style listener)::

    server = serve(job_dir, port=0, process_stats=callable, live=True)   # port 0: a free one
    server.sink(name, text, event)      # per line of a rank's output; event: the parsed event or None
    server.url, server.port
    server.close()

and standalone by ``pspnet-cluster metrics PATH... --port P`` for jobs launched by other tools: a
background thread follows the files (``monitoring.aggregate.JobMonitor``) every ``poll_interval_s``,
so a scrape renders state at most one poll interval old without reading anything itself
(``pspnet_last_event_age_seconds`` keeps staleness visible).
"""
from __future__ import annotations

import json
import math
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union
from urllib.parse import urlsplit

from monitoring.collector import CONTENT_TYPE, Metrics, ProcessStats
from monitoring.state import DeviceState, JobSummary

PathLike = Union[str, os.PathLike]
WEB_DIR = Path(__file__).resolve().parent / "web"

#: Static files of the dashboard: URL path -> (file name, content type).
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "application/javascript; charset=utf-8"),
    "/uPlot.iife.min.js": ("uPlot.iife.min.js", "application/javascript; charset=utf-8"),
    "/uPlot.min.css": ("uPlot.min.css", "text/css; charset=utf-8"),
}

#: /api/state puts at most this many devices into the charts (stragglers and dead ranks first,
#: then by rank); the table always lists every device.
MAX_CHART_DEVICES = 64


# ------------------------------------------------------------------ state sources

class FollowedJobs:
    """Standalone: one ``JobMonitor`` per job, polled by a background thread every ``poll_interval_s``.

    ``paths``: job directories (one job each) and/or log files and folders (together one job).
    ``__call__`` returns the summaries of what was read so far (thread-safe); a job whose poll raises
    keeps what was read before, and the error is in ``errors``.
    """

    def __init__(self, paths: Sequence[PathLike], *, poll_interval_s: float = 1.0, **agg_kwargs: Any) -> None:
        from monitoring.sources import JobMonitor, is_job_dir
        groups: List[List[Path]] = []
        loose: List[Path] = []
        for p in map(Path, paths):
            if is_job_dir(p) or (not p.exists() and p.suffix == ""):
                groups.append([p])      # a job dir (or one that a launcher is about to create)
            else:
                loose.append(p)
        if loose:
            groups.append(loose)
        self.monitors = [JobMonitor(g, **agg_kwargs) for g in groups]
        self.poll_interval_s = float(poll_interval_s)
        self.errors: Dict[int, str] = {}       # monitor index -> last error
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._last: List[JobSummary] = []
        self._polled = threading.Event()      # the first poll is done: scrapes before it wait for it

    def poll(self) -> None:
        with self._lock:
            for i, mon in enumerate(self.monitors):
                try:
                    mon.poll()
                    self.errors.pop(i, None)
                except Exception as exc:  # noqa: BLE001 - one unreadable job must not hide the others
                    self.errors[i] = f"{type(exc).__name__}: {exc}"
            self._polled.set()

    def start(self) -> "FollowedJobs":
        def loop() -> None:
            while not self._stop.is_set():
                self.poll()
                self._stop.wait(self.poll_interval_s)
        self._thread = threading.Thread(target=loop, name="pspnet-exporter-follow", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __call__(self, full: bool = True) -> List[JobSummary]:
        if not self._polled.is_set():
            if self._thread is None:
                self.poll()
            self._polled.wait()
        with self._lock:
            self._last = [mon.aggregator.snapshot(full=full) for mon in self.monitors]
            return self._last

    def last(self) -> List[JobSummary]:
        """The summaries handed out last (for LocalProcessStats, which needs only pids and hosts)."""
        return self._last


class LiveJob:
    """Inside `launch`: the job's state fed in memory with the events the launcher reads.

    Event files that exist when it is made (an earlier launch of the job, before `resume`) are read
    once, up to their size at that moment, in a background thread; everything after comes through
    ``sink``.  Events are folded in batches when a scrape asks, or when many have queued up.
    job.json (state, attempts, exit codes) is read on each call.
    """

    FOLD_AT = 4096      # queued events folded by the sink itself (bounded memory without scrapes)

    def __init__(self, job_dir: PathLike, **agg_kwargs: Any) -> None:
        from cluster.contracts.jobdir import JobPaths
        from monitoring.aggregate import Aggregator
        self.paths = JobPaths(job_dir)
        self.aggregator = Aggregator(job=Path(job_dir).resolve().name, **agg_kwargs)
        self.errors: Dict[int, str] = {}
        self._lock = threading.Lock()          # the aggregator
        self._queue_lock = threading.Lock()    # the queue (held for an append)
        self._queue: List[Dict[str, Any]] = []
        sizes = {}
        for p in sorted(self.paths.events_dir.glob("rank_*.jsonl")):
            try:
                sizes[p] = p.stat().st_size
            except OSError:
                pass
        self._lock.acquire()
        threading.Thread(target=self._read_existing, args=(sizes,), name="pspnet-exporter-history",
                         daemon=True).start()

    def _read_existing(self, sizes: Dict[Path, int]) -> None:
        try:
            for path, size in sizes.items():
                try:
                    with open(path, "rb") as fh:
                        data = fh.read(size)
                except OSError as exc:
                    self.errors[0] = f"{path}: {exc}"
                    continue
                self.aggregator.feed_lines(data[: data.rfind(b"\n") + 1])
        finally:
            self._lock.release()

    def sink(self, name: str, text: str, event: Optional[Dict[str, Any]]) -> None:
        """A line of a process's output (the console's listener signature); events are queued."""
        if event is None:
            return
        with self._queue_lock:
            self._queue.append(event)
            full = len(self._queue) >= self.FOLD_AT
        if full and self._lock.acquire(blocking=False):
            try:
                self._fold()
            finally:
                self._lock.release()

    def _fold(self) -> None:
        with self._queue_lock:
            queued, self._queue = self._queue, []
        self.aggregator.feed_events(queued)

    def close(self) -> None:
        pass

    def __call__(self, full: bool = True) -> List[JobSummary]:
        from monitoring.sources import read_job_json
        with self._lock:
            self._fold()
            self.aggregator.set_job_info(read_job_json(self.paths.job_json))
            return [self.aggregator.snapshot(full=full)]


# ------------------------------------------------------------------ rank processes of this host

class LocalProcessStats:
    """``process_stats`` for the standalone exporter: ranks of this host, by the pid of their start event.

    A rank counts when its host is this machine, its pid is alive, and the process is not younger
    than the rank's last event (so a pid reused by another program is not taken for the rank).
    Returns ``{(job, rank): {"pid", "cpu_seconds", "rss_bytes"}}``.
    """

    def __init__(self, summaries: Callable[[], List[JobSummary]], hostnames: Optional[Sequence[str]] = None) -> None:
        import socket
        self.summaries = summaries
        names = {socket.gethostname(), "localhost", "127.0.0.1"}   # no getfqdn: it may wait on DNS
        self.hostnames = set(hostnames) if hostnames is not None else names
        self._procs: Dict[int, Any] = {}

    def __call__(self) -> Dict[Any, Dict[str, Any]]:
        import psutil
        out: Dict[Any, Dict[str, Any]] = {}
        for job in self.summaries():
            for rank, dev in job.devices.items():
                if not dev.pid or dev.host not in self.hostnames or dev.state in ("finished", "failed", "stopped"):
                    continue
                try:
                    proc = self._procs.get(dev.pid)
                    if proc is None:
                        proc = self._procs[dev.pid] = psutil.Process(dev.pid)
                    if not proc.is_running():       # gone, or the pid now belongs to another process
                        self._procs.pop(dev.pid, None)
                        continue
                    if dev.last_event_ts is not None and proc.create_time() > dev.last_event_ts + 1.0:
                        continue
                    with proc.oneshot():
                        t = proc.cpu_times()
                        rss = proc.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    self._procs.pop(dev.pid, None)
                    continue
                out[(job.job, int(rank))] = {"pid": dev.pid, "cpu_seconds": t.user + t.system, "rss_bytes": rss}
        return out


# ------------------------------------------------------------------ npu-smi

class CachedReader:
    """Serves ``reader()``'s last result; refreshes it in a background thread once ``ttl_s`` old.

    Only the first call waits for ``reader()``; later calls never block a scrape (npu-smi takes
    up to a second on a busy host).  A None (npu-smi absent) is remembered for good; a reader that
    raises keeps the previous value and the error in ``last_error``.
    """

    def __init__(self, reader: Callable[[], Any], ttl_s: float = 10.0) -> None:
        self.reader = reader
        self.ttl_s = float(ttl_s)
        self._value: Any = None
        self._at = -math.inf
        self._absent = False
        self._refreshing = False
        self._lock = threading.Lock()
        self.last_error: Optional[str] = None

    def _refresh(self) -> None:
        try:
            value = self.reader()
            with self._lock:
                self._value = value
                if value is None:
                    self._absent = True
        except Exception as exc:  # noqa: BLE001 - keep the previous value
            self.last_error = f"{type(exc).__name__}: {exc}"
        finally:
            with self._lock:
                self._at = time.monotonic()
                self._refreshing = False

    def __call__(self) -> Any:
        with self._lock:
            if self._absent:
                return None
            first = self._at == -math.inf and not self._refreshing
            stale = time.monotonic() - self._at >= self.ttl_s and not self._refreshing
            if first or stale:
                self._refreshing = True
        if first:
            self._refresh()
        elif stale:
            threading.Thread(target=self._refresh, name="pspnet-npu-smi", daemon=True).start()
        with self._lock:
            return None if self._absent else self._value


# ------------------------------------------------------------------ JSON for the dashboard

def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


_DEVICE_KEYS = ("rank", "device", "host", "state", "attempt", "epoch", "epochs", "step", "steps_per_epoch",
                "global_step", "steps_seen", "loss", "lr", "step_time_s", "step_time_p50_s", "step_time_p95_s",
                "run_step_time_p50_s", "images_per_s", "val_loss", "miou", "best_miou", "last_event_age_s",
                "straggler", "stalled", "dead", "exit_code", "error", "pid", "source")


def device_label(dev: DeviceState) -> str:
    return f"rank {dev.rank}" + (f" (dev {dev.device})" if dev.device is not None else "")


def align(series: List[List[tuple]], max_points: int = 300) -> Dict[str, Any]:
    """Align several ``[(x, y), ...]`` series on one x axis (None where a series has no point).

    Entries without an x (text-log records) get their index in their series as x.  When the union
    of x values is larger than ``max_points`` (many devices, each stepping at slightly different
    times), x is rounded to buckets of ``span / max_points`` and each series keeps its last value
    per bucket, so the chart data stays small whatever the number of devices.
    """
    pts_list = []
    for s in series:
        pts = []
        for i, e in enumerate(s):
            x, y = e[0], e[1]
            if not isinstance(x, (int, float)):
                x = i
            pts.append((float(x), _clean(y)))
        pts_list.append(pts)
    xs_all = {x for pts in pts_list for x, _ in pts}
    if len(xs_all) > max_points:
        lo, hi = min(xs_all), max(xs_all)
        width = (hi - lo) / max_points or 1.0
        pts_list = [[(round(lo + width * math.floor((x - lo) / width), 6), y) for x, y in pts] for pts in pts_list]
    else:
        pts_list = [[(round(x, 6), y) for x, y in pts] for pts in pts_list]
    cleaned = [dict(pts) for pts in pts_list]
    xs = sorted(set().union(*[c.keys() for c in cleaned])) if cleaned else []
    return {"x": xs, "y": [[c.get(x) for x in xs] for c in cleaned]}


def state_json(jobs: List[JobSummary], now: Optional[float] = None,
               max_chart_devices: int = MAX_CHART_DEVICES) -> Dict[str, Any]:
    """What /api/state returns: per job, every device's fields and chart data."""
    now = time.time() if now is None else now
    out_jobs = []
    for job in jobs:
        devs = [job.devices[r] for r in sorted(job.devices)]
        charted = sorted(devs, key=lambda d: (not (d.straggler or d.dead), d.rank))[:max_chart_devices]
        charted.sort(key=lambda d: d.rank)
        labels = [device_label(d) for d in charted]
        miou = align([[(e, m) for e, m in d.miou_history] for d in charted])
        out_jobs.append({
            "job": job.job, "state": job.state, "attempt": job.attempt, "restarts": job.restarts,
            "world_size": job.world_size, "total_images_per_s": _clean(job.total_images_per_s),
            "slowest_rank": job.slowest_rank, "stragglers": list(job.stragglers),
            "straggler_margin": job.straggler_margin,
            "dead": list(getattr(job, "dead", []) or []), "stalled": list(getattr(job, "stalled", []) or []),
            "devices": [{k: _clean(getattr(d, k, None)) for k in _DEVICE_KEYS} for d in devs],
            "charts": {
                "labels": labels,
                "ranks": [d.rank for d in charted],
                "step_time": align([d.step_time_history for d in charted]),
                "loss": align([d.loss_history for d in charted]),
                "miou": miou,
            },
        })
    return {"ts": now, "jobs": out_jobs}


# ------------------------------------------------------------------ HTTP

class _Handler(BaseHTTPRequestHandler):
    server_version = "pspnet-exporter/1"
    protocol_version = "HTTP/1.1"
    timeout = 300          # an idle keep-alive connection is dropped after this many seconds

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)  # type: ignore[attr-defined]

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)  # type: ignore[attr-defined]

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet: the launcher owns the terminal
        pass

    def _send(self, code: int, body: bytes, ctype: str, extra: Optional[Dict[str, str]] = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:  # noqa: N802
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802
        exporter: "Exporter" = self.server.exporter  # type: ignore[attr-defined]
        path = urlsplit(self.path).path
        try:
            if path == "/metrics":
                body = exporter.metrics_text()
                self._send(200, body, CONTENT_TYPE)
            elif path == "/api/state":
                body = json.dumps(exporter.state(), separators=(",", ":"), allow_nan=False).encode()
                self._send(200, body, "application/json")
            elif path == "/healthz":
                self._send(200, b"ok\n", "text/plain; charset=utf-8")
            elif path in STATIC:
                name, ctype = STATIC[path]
                self._send(200, exporter.static(name), ctype)
            else:
                self._send(404, b"not found: try /metrics, /api/state or /\n", "text/plain; charset=utf-8")
        except BrokenPipeError:
            pass
        except Exception as exc:  # noqa: BLE001 - answer with the error rather than dropping the connection
            msg = f"exporter error: {type(exc).__name__}: {exc}\n".encode()
            try:
                self._send(500, msg, "text/plain; charset=utf-8")
            except OSError:
                pass


class _Server(ThreadingHTTPServer):
    """One thread per connection; the listen backlog holds a burst of hundreds of clients (the
    socketserver default of 5 made connections time out under ~200 concurrent clients)."""
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._conns: set = set()
        self._conns_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    last_error: Optional[str] = None

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away is normal; anything else is kept in ``last_error``, not printed."""
        import sys
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        self.last_error = f"{type(exc).__name__}: {exc}"

    def track(self, conn: Any, open_: bool) -> None:
        with self._conns_lock:
            (self._conns.add if open_ else self._conns.discard)(conn)

    def close_connections(self) -> None:
        """End open keep-alive connections, so nothing is served after close()."""
        import socket
        with self._conns_lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Exporter:
    """The metrics, the dashboard's JSON and the HTTP server of one or more jobs."""

    def __init__(self, source: Callable[..., List[JobSummary]], *, host: str = "127.0.0.1", port: int = 0,
                 process_stats: Optional[Callable[[], ProcessStats]] = None, live_from_process_stats: bool = True,
                 npu_reader: Optional[Callable[[], Any]] = None, web_dir: Path = WEB_DIR) -> None:
        self.source = source
        self.metrics = Metrics(lambda: source(full=False), process_stats=process_stats,
                               npu_reader=npu_reader, live_from_process_stats=live_from_process_stats)
        self.sink = getattr(source, "sink", None)
        self.web_dir = Path(web_dir)
        self._static: Dict[str, bytes] = {}
        self._render_lock = threading.Lock()
        self._httpd = _Server((host, int(port)), _Handler)
        self._httpd.exporter = self  # type: ignore[attr-defined]
        self._thread: Optional[threading.Thread] = None

    # -- content
    def metrics_text(self) -> bytes:
        with self._render_lock:   # the label cache and the hosts seen are per exporter
            return self.metrics.render()

    def state(self) -> Dict[str, Any]:
        out = state_json(self.source())
        errors = [f"{k}: {v}" for k, v in sorted(self.metrics.last_errors.items())]
        errors += [f"job {i}: {e}" for i, e in sorted(getattr(self.source, "errors", {}).items())]
        out["errors"] = errors
        return out

    def static(self, name: str) -> bytes:
        body = self._static.get(name)
        if body is None:
            body = self._static[name] = (self.web_dir / name).read_bytes()
        return body

    # -- server
    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def start(self) -> "Exporter":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.25},
                                        name=f"pspnet-exporter:{self.port}", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever(poll_interval=0.25)

    def close(self) -> None:
        """Stop accepting, end open connections, release the port, stop following files."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()
        self._httpd.close_connections()
        close = getattr(self.source, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "Exporter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def serve(paths: Union[PathLike, Sequence[PathLike]], host: str = "127.0.0.1", port: int = 0,
          process_stats: Optional[Callable[[], ProcessStats]] = None,
          npu_reader: Optional[Callable[[], Any]] = None, start: bool = True,
          local_processes: bool = False, live: bool = False, poll_interval_s: float = 1.0,
          **agg_kwargs: Any) -> Exporter:
    """Serve /metrics, /api/state and the dashboard for a job dir (or log paths) in a background thread.

    ``port=0`` picks a free port (see ``.port``/``.url``).  ``live=True`` (the launcher): the one job
    dir in ``paths`` is fed through ``exporter.sink``; otherwise the files are followed every
    ``poll_interval_s``.  ``process_stats()`` returns ``{rank: {"pid", "cpu_seconds", "rss_bytes"}}``
    for live ranks (the launcher knows them); ``npu_reader()`` returns the accelerator's health readings
    (parsed npu-smi chips), handed in by the caller that knows the accelerator (``cluster.accelerators``).  Without ``process_stats``, ``local_processes=True`` (the standalone command)
    exports CPU and memory of the ranks running on this host, found by the pid of their start event
    (``LocalProcessStats``).  ``start=False`` leaves serving to ``serve_forever()``.  Raises OSError
    when the address cannot be bound.  ``agg_kwargs`` go to the Aggregator (e.g. ``straggler_margin``).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    source: Any = (LiveJob(list(paths)[0], **agg_kwargs) if live
                   else FollowedJobs(list(paths), poll_interval_s=poll_interval_s, **agg_kwargs))
    procs = process_stats
    if procs is None and local_processes:
        procs = LocalProcessStats(source.last)
    try:
        exp = Exporter(source, host=host, port=port, process_stats=procs,
                       live_from_process_stats=process_stats is not None, npu_reader=npu_reader)
    except BaseException:
        source.close()
        raise
    if not live:
        source.start()
    return exp.start() if start else exp
