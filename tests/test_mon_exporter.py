"""The Prometheus collectors, the text renderer, the exporter's HTTP server and the `metrics` command."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cluster.npu_smi import parse_npu_smi_info
from monitoring.aggregate import STEP_TIME_BUCKETS
from monitoring.collector import Metrics
from cluster.contracts.events import EventWriter
from monitoring.exporter import CachedReader, align, serve, state_json
from monitoring.state import DeviceState, JobSummary

from helpers import job_record

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------ helpers

def samples(text):
    """{(sample name, frozenset(labels)): value} of a text exposition."""
    if isinstance(text, bytes):
        text = text.decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(smp, name, **labels):
    matches = [v for (n, ls), v in smp.items() if n == name and set(labels.items()) <= ls]
    assert len(matches) == 1, f"{name}{labels}: {len(matches)} matches"
    return matches[0]


def names(smp):
    return {n for n, _ in smp}


class JobWriter:
    """Appends events to a job dir the way the orchestrator stores them (events/rank_<R>.jsonl)."""

    def __init__(self, root, job="job1", ranks=2, host="node0", state="running"):
        self.root = Path(root)
        (self.root / "events").mkdir(parents=True, exist_ok=True)
        self.job = job
        self.ts = 1_700_000_000.0
        self.writers = {r: EventWriter(job=job, attempt=0, rank=r, world_size=ranks, device=r + 4, host=host)
                        for r in range(ranks)}
        self.set_state(state)

    def set_state(self, state, attempts=1):
        (self.root / "job.json").write_text(json.dumps(job_record(self.job, state, len(self.writers), attempts)))

    def emit(self, rank, name, ts=None, **fields):
        ev = self.writers[rank].event(name, **fields)
        ev["ts"] = self.ts if ts is None else ts
        with open(self.root / "events" / f"rank_{rank}.jsonl", "a") as fh:
            fh.write(json.dumps(ev) + "\n")

    def steps(self, rank, start, n, step_time, epoch=1, spe=100):
        for g in range(start, start + n):
            self.ts += step_time
            self.emit(rank, "step", epoch=epoch, step=g, global_step=g, steps_per_epoch=spe, loss=1.0 / g,
                      step_time_s=step_time, images_per_s=2 / step_time, lr=0.01)


def get(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.headers.get("Content-Type"), r.read()


def eventually(fetch, ok, timeout=15.0):
    """``fetch()`` again until ``ok`` holds for its result (bounded); returns that result."""
    deadline = time.monotonic() + timeout
    while True:
        got = fetch()
        if ok(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def device(rank, **kw):
    base = dict(job="j", rank=rank, device=rank, host="h0", state="running")
    base.update(kw)
    return DeviceState(**base)


# ------------------------------------------------------------------ collector

def test_collector_exports_device_process_and_job_families():
    now = 1000.0
    d0 = device(0, step_time_s=0.5, step_time_p50_s=0.4, step_time_p95_s=0.6, images_per_s=4.0, loss=0.7,
                val_loss=0.3, epoch=3, global_step=120, steps_seen=120, miou=0.61, best_miou=0.65,
                last_event_ts=now - 2.5, straggler=True, state="running")
    d1 = device(1, last_event_ts=now - 1, state="starting")      # nothing measured yet
    job = JobSummary(job="j", state="restarting", attempt=2, restarts=2, devices={0: d0, 1: d1},
                     total_images_per_s=4.0, stragglers=[0])
    procs = {0: {"pid": 11, "cpu_seconds": 12.5, "rss_bytes": 123456789}}
    c = Metrics(lambda: [job], process_stats=lambda: procs, clock=lambda: now)
    smp = samples(c.render())
    lab0 = dict(job="j", host="h0", rank="0", device="0")
    assert value(smp, "pspnet_step_time_seconds", **lab0) == 0.5
    assert value(smp, "pspnet_step_time_p50_seconds", **lab0) == 0.4
    assert value(smp, "pspnet_step_time_p95_seconds", **lab0) == 0.6
    assert value(smp, "pspnet_images_per_second", **lab0) == 4.0
    assert value(smp, "pspnet_loss", **lab0) == 0.7
    assert value(smp, "pspnet_val_loss", **lab0) == 0.3
    assert value(smp, "pspnet_epoch", **lab0) == 3
    assert value(smp, "pspnet_global_step", **lab0) == 120
    assert value(smp, "pspnet_steps_total", **lab0) == 120
    assert value(smp, "pspnet_miou_ratio", **lab0) == 0.61
    assert value(smp, "pspnet_best_miou_ratio", **lab0) == 0.65
    assert value(smp, "pspnet_last_event_age_seconds", **lab0) == 2.5
    assert value(smp, "pspnet_straggler", **lab0) == 1
    assert value(smp, "pspnet_straggler", rank="1") == 0
    assert value(smp, "pspnet_device_state", rank="0") == 1
    assert ("pspnet_device_state", frozenset(dict(lab0, state="running").items())) in smp
    # live processes decide "up" when the launcher passes them
    assert value(smp, "pspnet_up", rank="0") == 1 and value(smp, "pspnet_up", rank="1") == 0
    assert value(smp, "pspnet_process_cpu_seconds_total", job="j", rank="0") == 12.5
    assert value(smp, "pspnet_process_resident_memory_bytes", job="j", rank="0") == 123456789
    # unknown values are left out, not exported as 0
    for name in ("pspnet_step_time_seconds", "pspnet_loss", "pspnet_miou_ratio", "pspnet_epoch"):
        assert not [k for k in smp if k[0] == name and ("rank", "1") in k[1]], name
    # per job
    assert value(smp, "pspnet_job_restarts_total", job="j") == 2
    assert value(smp, "pspnet_job_ranks", job="j") == 2
    assert value(smp, "pspnet_job_stragglers", job="j") == 1
    assert value(smp, "pspnet_job_attempt", job="j") == 2
    states = {dict(ls)["state"]: v for (n, ls), v in smp.items() if n == "pspnet_job_state"}
    assert states["restarting"] == 1 and sum(states.values()) == 1 and "running" in states


def test_up_without_process_info_follows_state_and_event_age():
    now = 10_000.0
    devs = {0: device(0, last_event_ts=now - 10),                       # recent: up
            1: device(1, last_event_ts=now - 1000),                     # silent too long: down
            2: device(2, last_event_ts=now - 1, state="finished"),      # ended: down
            3: device(3, last_event_ts=None)}                           # never heard of: down
    c = Metrics(lambda: [JobSummary(job="j", devices=devs)], stale_after_s=300, clock=lambda: now)
    smp = samples(c.render())
    assert [value(smp, "pspnet_up", rank=str(r)) for r in range(4)] == [1, 0, 0, 0]
    assert "pspnet_process_cpu_seconds_total" not in names(smp)


def test_fast_renderer_is_byte_identical_to_generate_latest():
    """The exporter serves its own rendering; it must equal prometheus_client's."""
    now = 5000.0
    devs = {}
    for r in range(5):
        devs[r] = device(r, host='we"ird\\host\nname' if r == 3 else "h0", device=None if r == 4 else r,
                         step_time_s=0.1 * (r + 1), step_time_p50_s=1e-7 * r, step_time_p95_s=12345678.9,
                         images_per_s=float(r), loss=float("nan") if r == 2 else 1.5, epoch=r,
                         global_step=10 ** 9 + r, steps_seen=r, miou=0.5, best_miou=0.5 + r / 100,
                         last_event_ts=now - r, state=["running", "failed", "weird", "finished", "starting"][r],
                         step_time_buckets=[r, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 7 * r, 1],
                         step_time_sum_s=12.5 * r)
    job = JobSummary(job="j-1", state="running", restarts=1, devices=devs, total_images_per_s=10.0)
    chips = parse_npu_smi_info((ROOT / "tests/fixtures/npu-smi-a3-2npu.txt").read_text())
    c = Metrics(lambda: [job], process_stats=lambda: {0: {"cpu_seconds": 1.0, "rss_bytes": 2.0}},
                        npu_reader=lambda: chips, clock=lambda: now, host="node9")
    expected = generate_latest(c.registry)
    assert c.render() == expected
    assert b'host="we\\"ird\\\\host\\nname"' in expected     # escaping really exercised


def test_histogram_is_cumulative_over_the_buckets_and_left_out_before_any_step():
    counts = [1, 0, 2] + [0] * 9 + [1]                  # per bucket, +Inf last
    devs = {0: device(0, step_time_buckets=counts, step_time_sum_s=90.5), 1: device(1)}
    smp = samples(Metrics(lambda: [JobSummary(job="j", devices=devs)], host="n").render())
    cum = {dict(ls)["le"]: v for (n, ls), v in smp.items()
           if n == "pspnet_step_duration_seconds_bucket" and ("rank", "0") in ls}
    assert list(cum) == [repr(b) for b in STEP_TIME_BUCKETS] + ["+Inf"]
    assert cum["0.01"] == 1 and cum["0.05"] == 3 and cum["60.0"] == 3 and cum["+Inf"] == 4
    assert value(smp, "pspnet_step_duration_seconds_count", rank="0") == 4
    assert value(smp, "pspnet_step_duration_seconds_sum", rank="0") == 90.5
    assert not [k for k in smp if k[0].startswith("pspnet_step_duration") and ("rank", "1") in k[1]]


def test_npu_smi_figures_from_both_table_layouts(fixtures_dir):
    for name, expect in (("npu-smi-910b4-2dev.txt", {("0", "0", "0"): (91.3, 33, 3197), ("1", "0", "1"): (88.1, 32, 3197)}),
                         ("npu-smi-a3-2npu.txt", {("0", "0", "0"): (162.6, 34, 3419), ("0", "1", "1"): (None, 34, 2874),
                                                  ("1", "0", "2"): (186.3, 36, 3415), ("1", "1", "3"): (None, 36, 3195)})):
        chips = parse_npu_smi_info((fixtures_dir / name).read_text())
        c = Metrics(lambda: [], npu_reader=lambda: chips, host="node7")
        smp = samples(c.render())
        for (npu, chip, dev), (power, temp, hbm) in expect.items():
            lab = dict(host="node7", npu=npu, chip=chip, device=dev)
            assert value(smp, "pspnet_npu_up", **lab) == 1
            assert value(smp, "pspnet_npu_temperature_celsius", **lab) == temp
            assert value(smp, "pspnet_npu_hbm_used_bytes", **lab) == hbm * 2 ** 20
            assert value(smp, "pspnet_npu_hbm_total_bytes", **lab) == 65536 * 2 ** 20
            assert value(smp, "pspnet_npu_aicore_utilization_ratio", **lab) == 0
            key = ("pspnet_npu_power_watts", frozenset(lab.items()))
            if power is None:
                assert key not in smp               # "-" in the table: not known, not 0
            else:
                assert smp[key] == pytest.approx(power)


def test_npu_health_other_than_ok_is_down_and_reader_errors_do_not_break_a_scrape():
    chips = [{"npu_id": 0, "chip_id": 0, "health": "Alarm", "temp_c": 90}]
    c = Metrics(lambda: [], npu_reader=lambda: chips, host="n")
    assert value(samples(c.render()), "pspnet_npu_up", npu="0") == 0

    def broken():
        raise RuntimeError("npu-smi hung")
    c = Metrics(lambda: [JobSummary(job="j", devices={0: device(0, last_event_ts=1.0)})], npu_reader=broken)
    smp = samples(c.render())
    assert value(smp, "pspnet_job_ranks", job="j") == 1
    assert "npu-smi hung" in c.last_errors["npu"]


def test_cached_reader_calls_at_most_once_per_ttl_and_remembers_absence():
    calls = []

    def reader():
        calls.append(1)
        return [1]
    r = CachedReader(reader, ttl_s=3600)
    assert r() == [1] and r() == [1] and len(calls) == 1
    absent = CachedReader(lambda: calls.append(2), ttl_s=0)
    assert absent() is None and absent() is None and calls.count(2) == 1


def test_cached_reader_refreshes_in_the_background_without_blocking():
    import threading
    gate = threading.Event()
    values = iter([["first"], ["second"]])

    def reader():
        v = next(values)
        if v == ["second"]:
            gate.wait(10)          # a slow npu-smi
        return v
    r = CachedReader(reader, ttl_s=0)
    assert r() == ["first"]        # the first call waits for the reader
    t0 = time.monotonic()
    assert r() == ["first"]        # stale: refresh started, old value served at once
    assert time.monotonic() - t0 < 5
    gate.set()
    deadline = time.monotonic() + 10
    while r() != ["second"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert r() == ["second"]       # later refreshes fail (the reader is exhausted): the last value stays


# ------------------------------------------------------------------ JSON for the dashboard

def test_align_puts_series_on_one_x_axis_with_gaps():
    out = align([[(1.0, 0.1), (2.0, 0.2)], [(2.0, 0.3), (3.0, float("nan"))], [(None, 5.0)]])
    assert out["x"] == [0.0, 1.0, 2.0, 3.0]
    assert out["y"] == [[None, 0.1, 0.2, None], [None, None, 0.3, None], [5.0, None, None, None]]


def test_state_json_lists_every_device_and_charts_at_most_the_cap():
    devs = {r: device(r, straggler=(r == 9), step_time_history=[(float(r), 0.1)]) for r in range(10)}
    st = state_json([JobSummary(job="j", devices=devs, stragglers=[9])], max_chart_devices=4)
    job = st["jobs"][0]
    assert [d["rank"] for d in job["devices"]] == list(range(10))
    assert job["charts"]["ranks"] == [0, 1, 2, 9]          # stragglers always charted
    assert len(job["charts"]["step_time"]["y"]) == 4
    json.dumps(st, allow_nan=False)


# ------------------------------------------------------------------ the HTTP server

def test_server_serves_metrics_state_and_dashboard_and_follows_new_events(tmp_path):
    jw = JobWriter(tmp_path / "job1")
    jw.emit(0, "start", pid=1, mode="dynamic", backend="cpu", config_sha="x", mindspore="2.10")
    jw.steps(0, 1, 3, 0.2)
    jw.steps(1, 1, 3, 0.4)
    srv = serve(tmp_path / "job1", port=0, npu_reader=None,
                process_stats=lambda: {0: {"pid": 1, "cpu_seconds": 3.0, "rss_bytes": 1e8}})
    try:
        assert srv.host == "127.0.0.1" and srv.port > 0 and srv.url == f"http://127.0.0.1:{srv.port}"
        code, ctype, body = get(srv.url + "/metrics")
        assert code == 200 and ctype.startswith("text/plain; version=0.0.4")
        smp = samples(body)
        lab1 = dict(job="job1", host="node0", rank="1", device="5")
        assert value(smp, "pspnet_step_time_seconds", **lab1) == 0.4
        assert value(smp, "pspnet_global_step", **lab1) == 3
        assert value(smp, "pspnet_step_duration_seconds_count", **lab1) == 3
        assert value(smp, "pspnet_up", rank="0") == 1 and value(smp, "pspnet_up", rank="1") == 0
        assert value(smp, "pspnet_process_cpu_seconds_total", rank="0") == 3.0

        jw.steps(1, 4, 2, 0.8)           # new events: the next scrape reads them
        jw.emit(1, "epoch", epoch=1, epoch_time_s=2.0, mean_step_time_s=0.5, val_loss=0.25, miou=0.42,
                macc=0.5, allacc=0.8, best_miou=0.42)
        smp = eventually(lambda: samples(get(srv.url + "/metrics")[2]),
                         lambda smp: value(smp, "pspnet_global_step", **lab1) == 5)    # within a poll interval
        assert value(smp, "pspnet_step_time_seconds", **lab1) == 0.8
        assert value(smp, "pspnet_global_step", **lab1) == 5
        assert value(smp, "pspnet_step_duration_seconds_count", **lab1) == 5
        assert value(smp, "pspnet_step_duration_seconds_bucket", le="0.5", **lab1) == 3
        assert value(smp, "pspnet_miou_ratio", **lab1) == 0.42

        code, ctype, body = get(srv.url + "/api/state")
        st = json.loads(body)
        job = st["jobs"][0]
        assert job["job"] == "job1" and job["state"] == "running"
        assert [d["global_step"] for d in job["devices"]] == [3, 5]
        assert job["charts"]["labels"] == ["rank 0 (dev 4)", "rank 1 (dev 5)"]
        assert len(job["charts"]["step_time"]["y"]) == 2
        assert job["charts"]["miou"]["x"] == [1.0] and job["charts"]["miou"]["y"][1] == [0.42]

        code, ctype, body = get(srv.url + "/")
        assert ctype.startswith("text/html") and b"uPlot.iife.min.js" in body and b"app.js" in body
        for asset in ("/app.js", "/uPlot.iife.min.js", "/uPlot.min.css"):
            assert get(srv.url + asset)[0] == 200
        with pytest.raises(urllib.error.HTTPError) as err:
            get(srv.url + "/nope")
        assert err.value.code == 404
    finally:
        srv.close()
    with pytest.raises(OSError):          # closed: nothing listens any more
        socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()


def test_server_reads_restarts_and_state_from_job_json(tmp_path):
    jw = JobWriter(tmp_path / "j2", job="j2", ranks=1)
    jw.steps(0, 1, 2, 0.1)
    jw.set_state("restarting", attempts=3)
    with serve(tmp_path / "j2", port=0, npu_reader=None) as srv:
        smp = samples(get(srv.url + "/metrics")[2])
        assert value(smp, "pspnet_job_restarts_total", job="j2") == 2
        assert value(smp, "pspnet_job_state", job="j2", state="restarting") == 1
        assert value(smp, "pspnet_job_state", job="j2", state="running") == 0


def test_server_on_missing_job_dir_answers_and_picks_the_job_up_later(tmp_path):
    srv = serve(tmp_path / "later", port=0, npu_reader=None)
    try:
        code, _, body = get(srv.url + "/metrics")
        assert code == 200
        assert "pspnet_step_time_seconds" not in names(samples(body))     # no device known yet
        jw = JobWriter(tmp_path / "later", job="later", ranks=1)
        jw.steps(0, 1, 1, 0.3)
        smp = eventually(lambda: samples(get(srv.url + "/metrics")[2]),
                         lambda smp: "pspnet_step_time_seconds" in names(smp))
        assert value(smp, "pspnet_step_time_seconds", job="later", rank="0") == 0.3
    finally:
        srv.close()


def test_promtool_check_metrics_on_a_real_scrape_prints_no_warning(tmp_path, fixtures_dir):
    jw = JobWriter(tmp_path / "job1", ranks=2)
    for r in range(2):
        jw.steps(r, 1, 4, 0.3 + r)
        jw.emit(r, "epoch", epoch=1, epoch_time_s=2.0, mean_step_time_s=0.5, val_loss=0.25, miou=0.42,
                macc=0.5, allacc=0.8, best_miou=0.42)
    chips = parse_npu_smi_info((fixtures_dir / "npu-smi-a3-2npu.txt").read_text())
    with serve(tmp_path / "job1", port=0, npu_reader=lambda: chips,
               process_stats=lambda: {0: {"pid": 1, "cpu_seconds": 3.0, "rss_bytes": 1e8}}) as srv:
        body = get(srv.url + "/metrics")[2]
    fams = {n for n, _ in samples(body)}
    assert {"pspnet_step_duration_seconds_bucket", "pspnet_process_cpu_seconds_total", "pspnet_npu_power_watts",
            "pspnet_job_state", "pspnet_miou_ratio"} <= fams          # every kind of family is checked
    r = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert r.returncode == 0 and r.stdout == b"" and r.stderr == b"", (r.stdout + r.stderr).decode()


def test_close_ends_keep_alive_connections(tmp_path):
    import http.client
    srv = serve(tmp_path, port=0, npu_reader=None)
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Connection", "").lower() != "close"
        resp.read()
        srv.close()                                   # Prometheus would reuse this connection
        with pytest.raises((OSError, http.client.HTTPException)):
            conn.request("GET", "/metrics")
            conn.getresponse().read()
    finally:
        conn.close()
        srv.close()                                   # closing twice is harmless


def test_serve_reports_a_port_in_use(tmp_path):
    with serve(tmp_path, port=0, npu_reader=None) as first:
        with pytest.raises(OSError):
            serve(tmp_path, port=first.port, npu_reader=None)


# ------------------------------------------------------------------ the `metrics` command

def test_metrics_command_serves_a_job_dir_until_interrupted(tmp_path):
    jw = JobWriter(tmp_path / "job1", ranks=2)
    jw.steps(0, 1, 2, 0.25)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "metrics", str(tmp_path / "job1"),
                             "--port", "0", "--no-npu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=str(tmp_path))
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving http://127.0.0.1:"), line + proc.stderr.read()
        url = line.split()[1].rsplit("/metrics", 1)[0]
        smp = samples(get(url + "/metrics")[2])
        assert value(smp, "pspnet_step_time_seconds", job="job1", rank="0") == 0.25
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_metrics_command_errors_name_the_problem(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "orchestrator.cli", "metrics", str(tmp_path / "nope")],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "nope" in r.stderr and "no such file" in r.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "orchestrator.cli", "metrics", str(tmp_path), "--port", str(port)],
                           capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and f"127.0.0.1:{port}" in r.stderr and "--port" in r.stderr
    r = subprocess.run([sys.executable, "-m", "orchestrator.cli", "metrics", str(tmp_path), "--poll", "nan"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "--poll" in r.stderr and "serving" not in r.stdout


# ------------------------------------------------------------------ standalone: rank processes of this host

def test_local_process_stats_finds_live_ranks_of_this_host_only():
    from monitoring.exporter import LocalProcessStats
    me = os.getpid()
    now = time.time()
    devs = {0: device(0, job="j", host="thishost", pid=me, last_event_ts=now),                # this process
            1: device(1, job="j", host="otherhost", pid=me, last_event_ts=now),               # another machine
            2: device(2, job="j", host="thishost", pid=me, last_event_ts=1.0),                # event older than the process
            3: device(3, job="j", host="thishost", pid=2 ** 22 + 12345, last_event_ts=now),   # no such pid
            4: device(4, job="j", host="thishost", pid=me, last_event_ts=now, state="finished")}
    jobs = [JobSummary(job="j", devices=devs)]
    stats = LocalProcessStats(lambda: jobs, hostnames=["thishost"])()
    assert set(stats) == {("j", 0)}
    assert stats[("j", 0)]["pid"] == me and stats[("j", 0)]["cpu_seconds"] > 0 and stats[("j", 0)]["rss_bytes"] > 1e6
    # exported per (job, rank), while "up" still follows event recency (standalone: not every rank is local)
    c = Metrics(lambda: jobs, process_stats=LocalProcessStats(lambda: jobs, hostnames=["thishost"]),
                        live_from_process_stats=False, clock=lambda: now)
    smp = samples(c.render())
    assert value(smp, "pspnet_process_resident_memory_bytes", job="j", rank="0") > 1e6
    assert [k for k in smp if k[0] == "pspnet_process_cpu_seconds_total"] == [
        k for k in smp if k[0] == "pspnet_process_cpu_seconds_total" and ("rank", "0") in k[1]]
    assert value(smp, "pspnet_up", rank="1") == 1 and value(smp, "pspnet_up", rank="4") == 0


def test_launcher_process_table_decides_up_for_its_hosts_and_recency_for_others():
    now = 100.0
    devs = {0: device(0, host="a", last_event_ts=now), 1: device(1, host="a", last_event_ts=now),
            2: device(2, host="b", last_event_ts=now), 3: device(3, host="b", last_event_ts=now - 1000)}
    procs = {0: {"pid": 5, "cpu_seconds": 1.0, "rss_bytes": 1.0}}          # rank 1's process on host a is gone
    c = Metrics(lambda: [JobSummary(job="j", devices=devs)], process_stats=lambda: procs,
                        stale_after_s=300, clock=lambda: now)
    smp = samples(c.render())
    assert [value(smp, "pspnet_up", rank=str(r)) for r in range(4)] == [1, 0, 1, 0]
    procs.clear()                                                            # every local rank ended
    smp = samples(c.render())
    assert value(smp, "pspnet_up", rank="0") == 0 and value(smp, "pspnet_up", rank="2") == 1


def test_align_buckets_many_distinct_times_to_a_bounded_axis():
    # 8 devices x 120 steps, each device a few ms off the others: 960 distinct times
    series = [[(1000.0 + 0.5 * i + 0.003 * r, 0.5 + r) for i in range(120)] for r in range(8)]
    out = align(series, max_points=300)
    assert len(out["x"]) <= 301 and out["x"] == sorted(out["x"])
    for r in range(8):
        ys = [y for y in out["y"][r] if y is not None]
        assert len(ys) == 120 and set(ys) == {0.5 + r}      # no step lost: buckets are finer than a step


# ------------------------------------------------------------------ property: any state renders, identically

from hypothesis import given, settings, strategies as st  # noqa: E402

_floats = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-10 ** 12, 10 ** 12))
_text = st.text(max_size=12)


@st.composite
def _jobs(draw):
    jobs = []
    for j in range(draw(st.integers(1, 2))):
        name = draw(_text)
        devs = {}
        for r in draw(st.lists(st.integers(0, 50), max_size=4, unique=True)):
            buckets = draw(st.one_of(st.just([]), st.lists(st.integers(0, 10 ** 9), min_size=13, max_size=13)))
            devs[r] = DeviceState(job=name, rank=r, device=draw(st.one_of(st.none(), st.integers(0, 15))), host=draw(_text),
                                  state=draw(st.sampled_from(["running", "failed", "weird", ""])),
                                  step_time_s=draw(_floats), loss=draw(_floats), miou=draw(_floats),
                                  images_per_s=draw(_floats), epoch=draw(st.integers(0, 5)),
                                  last_event_ts=draw(st.one_of(st.none(), st.floats(0, 2e9))),
                                  straggler=draw(st.booleans()), step_time_buckets=buckets,
                                  step_time_sum_s=draw(st.floats(0, 1e12)))
        jobs.append(JobSummary(job=name, state=draw(st.sampled_from(["running", "odd"])), devices=devs,
                               restarts=draw(st.integers(0, 5)), total_images_per_s=draw(_floats)))
    return jobs


@settings(max_examples=60, deadline=None)
@given(_jobs())
def test_any_state_renders_to_valid_text_identical_to_generate_latest(jobs):
    c = Metrics(lambda: jobs, clock=lambda: 1e9, host="h")
    expected = generate_latest(c.registry)
    assert c.render() == expected
    list(text_string_to_metric_families(expected.decode()))      # parses back


def test_exporter_serves_plain_text_logs_of_other_tools(fixtures_dir):
    """The model zoo README's 4-device training log (interleaved text lines, no event stream)."""
    with serve(fixtures_dir / "seed-modelzoo-readme.md", port=0, npu_reader=None) as srv:
        smp = samples(get(srv.url + "/metrics")[2])
    assert value(smp, "pspnet_job_ranks", job="seed-modelzoo-readme") == 4
    assert value(smp, "pspnet_best_miou_ratio", rank="1", device="1") == 0.7048
    assert value(smp, "pspnet_best_miou_ratio", rank="3", device="3") == 0.6963
    assert value(smp, "pspnet_step_time_seconds", rank="0") == pytest.approx(1.292189)


def test_one_failing_job_does_not_hide_the_others(tmp_path):
    from monitoring.exporter import Exporter, FollowedJobs
    JobWriter(tmp_path / "a", job="a", ranks=1).steps(0, 1, 2, 0.1)
    JobWriter(tmp_path / "b", job="b", ranks=1).steps(0, 1, 2, 0.2)
    src = FollowedJobs([tmp_path / "a", tmp_path / "b"])
    src.poll()
    assert [j.job for j in src()] == ["a", "b"]

    def broken():
        raise PermissionError("events/rank_0.jsonl: permission denied")
    src.monitors[1].poll = broken
    src.poll()
    assert [j.job for j in src()] == ["a", "b"]          # b: what was read before
    assert src()[1].devices[0].steps_seen == 2
    assert "permission denied" in src.errors[1]
    exp = Exporter(src, port=0)                           # what /api/state answers (the page shows it)
    try:
        st = exp.state()
        assert [j["job"] for j in st["jobs"]] == ["a", "b"]
        assert any("permission denied" in e for e in st["errors"])
    finally:
        exp.close()


# ------------------------------------------------------------------ inside `launch`: fed in memory

def test_launch_exporter_shows_the_lines_it_is_handed_and_the_history_of_earlier_launches(tmp_path):
    from cluster.contracts.events import MARKER
    jw = JobWriter(tmp_path / "job", job="job", ranks=2)
    jw.steps(0, 1, 3, 0.2)                               # written by an earlier launch (then `resume`)
    with serve(tmp_path / "job", port=0, npu_reader=None, live=True, process_stats=lambda: {}) as srv:
        for rank, g in ((0, 4), (0, 5), (1, 1), (1, 2)):
            jw.steps(rank, g, 1, 0.3)                    # the launcher's sink writes the file...
            with open(tmp_path / "job" / "events" / f"rank_{rank}.jsonl", "rb") as fh:
                line = fh.read().splitlines()[-1].decode()
            srv.sink(f"rank_{rank}", MARKER + line, json.loads(line))   # ...and hands the line over
        srv.sink("rank_1", "a plain log line", None)
        (tmp_path / "job" / "events" / "rank_1.jsonl").unlink()          # what the files hold does not matter
        smp = samples(get(srv.url + "/metrics")[2])
    assert value(smp, "pspnet_steps_total", rank="0") == 5                # 3 read once + 2 handed over
    assert value(smp, "pspnet_steps_total", rank="1") == 2
    assert value(smp, "pspnet_global_step", rank="1") == 2
    assert value(smp, "pspnet_step_duration_seconds_count", rank="0") == 5


def test_exporter_answers_200_concurrent_clients(tmp_path):
    import threading
    jw = JobWriter(tmp_path / "job", ranks=2)          # a small job: the test is about connections
    for r in range(2):
        jw.steps(r, 1, 5, 0.2)
    results = []
    with serve(tmp_path / "job", port=0, npu_reader=None) as srv:
        get(srv.url + "/metrics")
        go = threading.Event()

        def client(path):
            go.wait(30)
            t0 = time.monotonic()
            try:      # a listen backlog of 5 left ~30-40 % of these waiting 7 s for SYN retries
                code = get(srv.url + path, timeout=6)[0]
            except OSError as exc:
                code = repr(exc)
            results.append((path, code, time.monotonic() - t0))
        threads = [threading.Thread(target=client, args=("/healthz" if i % 2 else "/metrics",)) for i in range(200)]
        for t in threads:
            t.start()
        go.set()
        for t in threads:
            t.join(60)
    assert len(results) == 200
    failed = [r for r in results if r[1] != 200]
    assert not failed, failed[:5]
