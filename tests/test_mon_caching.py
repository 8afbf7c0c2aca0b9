"""What a poll skips when nothing changed never hides a change: new files, rewritten job.json, new lines."""
import json
import os
import time

import pytest

from monitoring.sources import JobMonitor
from monitoring.exporter import Exporter, FollowedJobs
from monitoring.synthetic import step_lines, write_synthetic_job
from monitoring.tailer import Tailer


def _age(*paths, seconds=10.0):
    """Set mtimes into the past, as a job's files are long before they are read."""
    t = time.time() - seconds
    for p in paths:
        os.utime(p, (t, t))


def _append_step(path, rank, ts, step_time):
    line = next(step_lines(rank, 1, world_size=4, t0=ts - step_time, step_time_s=step_time / 0.9))
    ev = json.loads(line)
    ev["ts"], ev["step_time_s"] = ts, step_time
    with open(path, "a") as fh:
        fh.write(json.dumps(ev, separators=(",", ":")) + "\n")


def _job(tmp_path, ranks=4):
    root = write_synthetic_job(tmp_path / "job", ranks=ranks, state="running", finish=False)
    _age(root, *root.iterdir(), *(root / "events").iterdir())
    return root


def test_a_rank_file_that_appears_later_is_picked_up_even_within_the_same_second(tmp_path):
    root = _job(tmp_path, ranks=2)
    mon = JobMonitor([root])
    mon.poll()
    assert sorted(mon.summary().devices) == [0, 1]
    mon.poll()
    events = root / "events"
    st = os.stat(events)
    _append_step(events / "rank_2.jsonl", 2, 1_700_000_500.0, 0.25)   # a late rank...
    os.utime(events, ns=(st.st_atime_ns, st.st_mtime_ns))              # ...in the same clock tick as before
    mon.poll()
    s = mon.summary()
    assert sorted(s.devices) == [0, 1, 2]
    assert s.devices[2].step_time_s == 0.25


def test_job_json_rewritten_in_the_same_second_with_the_same_size_is_read_again(tmp_path):
    root = _job(tmp_path, ranks=2)
    mon = JobMonitor([root])
    mon.poll()
    assert mon.summary().state == "running"
    mon.poll()
    assert mon.summary().state == "running"           # unchanged: the same values
    info = json.loads((root / "job.json").read_text())
    st = os.stat(root / "job.json")
    for state, restarts in (("stopped", 3), ("failed", 4)):   # "stopped"/"failed": same length
        info["state"], info["restarts"] = state, restarts
        tmp = root / "job.json.tmp"
        tmp.write_text(json.dumps(info))
        os.replace(tmp, root / "job.json")               # as the orchestrator writes it (atomic rename)
        os.utime(root / "job.json", ns=(st.st_atime_ns, st.st_mtime_ns))
        mon.poll()
        s = mon.summary()
        assert s.state == state and s.restarts == restarts


def test_tailer_skips_unchanged_files_and_sees_growth_truncation_and_replacement(tmp_path):
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_bytes(b"one\n")
    b.write_bytes(b"x\n")
    t = Tailer()
    t.add(a)
    t.add(b)
    got = {c.path.name: c for c in t.poll()}
    assert got["a.log"].data == b"one\n" and got["b.log"].data == b"x\n"
    assert t.poll() == [] and t.last_bytes == 0      # nothing changed: nothing read
    with open(a, "ab") as fh:
        fh.write(b"two\n")
    got = t.poll()
    assert [(c.path.name, c.data, c.reset) for c in got] == [("a.log", b"two\n", False)]
    b.write_bytes(b"")                                # truncated
    assert t.poll() == []
    with open(b, "ab") as fh:
        fh.write(b"y\n")
    got = t.poll()
    assert [(c.path.name, c.data, c.reset) for c in got] == [("b.log", b"y\n", True)]
    new = tmp_path / "a.new"
    new.write_bytes(b"ONE\nTWO\n")                    # same size as a.log, another inode: replaced
    os.replace(new, a)
    got = t.poll()
    assert [(c.path.name, c.data, c.reset) for c in got] == [("a.log", b"ONE\nTWO\n", True)]


def test_scrape_shows_a_changed_device_and_an_unchanged_one_keeps_its_values(tmp_path):
    root = _job(tmp_path, ranks=4)
    src = FollowedJobs([root])
    exp = Exporter(src, port=0, npu_reader=None)
    try:
        def metric(body, name, rank):
            prefix = f'{name}{{device="{rank}",host="node0",job="job",rank="{rank}"}} '
            for line in body.decode().splitlines():
                if line.startswith(prefix):
                    return float(line[len(prefix):])
            return None

        src.poll()
        before = exp.metrics_text()
        steps0 = {r: metric(before, "pspnet_steps_total", r) for r in range(4)}
        assert all(v == 40.0 for v in steps0.values())
        _append_step(root / "events" / "rank_2.jsonl", 2, time.time(), 0.375)
        assert metric(exp.metrics_text(), "pspnet_steps_total", 2) == 40.0   # a scrape reads nothing itself
        src.poll()
        after = exp.metrics_text()
        assert metric(after, "pspnet_step_time_seconds", 2) == 0.375
        assert metric(after, "pspnet_steps_total", 2) == 41.0
        assert metric(after, "pspnet_step_duration_seconds_count", 2) == metric(
            before, "pspnet_step_duration_seconds_count", 2) + 1
        for r in (0, 1, 3):
            for name in ("pspnet_steps_total", "pspnet_step_time_seconds", "pspnet_loss",
                         "pspnet_step_time_p50_seconds", "pspnet_step_duration_seconds_count"):
                assert metric(after, name, r) == metric(before, name, r), (name, r)
        src.poll()
        again = exp.metrics_text()                    # nothing new: same values (the age goes on)
        strip = [ln for ln in again.decode().splitlines() if "last_event_age" not in ln]
        assert strip == [ln for ln in after.decode().splitlines() if "last_event_age" not in ln]
    finally:
        exp.close()


def test_snapshot_histories_drop_gaps_only_while_they_are_in_the_window(tmp_path):
    root = _job(tmp_path, ranks=1)
    path = root / "events" / "rank_0.jsonl"
    with open(path, "a") as fh:                      # a step without a step time: a gap
        fh.write(json.dumps({"v": 1, "job": "job", "rank": 0, "event": "step", "ts": 1_800_000_000.0,
                             "step_time_s": None, "loss": 0.5}, separators=(",", ":")) + "\n")
    mon = JobMonitor([root])
    mon.poll()
    s = mon.summary()
    assert all(v is not None for _, v in s.devices[0].step_time_history)
    assert len(s.devices[0].step_time_history) == 40  # 40 steps with times, the gap left out
    for i in range(130):                             # the gap leaves the bounded window
        _append_step(path, 0, 1_800_000_001.0 + i, 0.5)
        if i % 40 == 0:
            mon.poll()
            mon.summary()
    mon.poll()
    hist = mon.summary().devices[0].step_time_history
    assert len(hist) == 120 and hist[-1] == (1_800_000_130.0, 0.5)


def test_window_and_run_percentiles_over_batches_of_any_size_are_numpys():
    import numpy as np

    from monitoring.aggregate import Aggregator
    rng = np.random.default_rng(5)
    times = rng.uniform(0.1, 2.0, 700).round(3)       # rounded: repeated values, as real step times have
    agg = Aggregator(window=50)
    w = None
    i = 0
    for size in [1, 1, 3, 200, 1, 7, 64, 65, 1, 300, 2] * 2:
        chunk = times[i:i + size]
        if chunk.size == 0:
            break
        agg.feed_events([{"event": "step", "rank": 0, "ts": 1.0 + i + k, "step_time_s": float(t), "loss": 1.0}
                         for k, t in enumerate(chunk)])
        i += chunk.size
        w = times[max(0, i - 50):i]
        d = agg.snapshot(now=1e9).devices[0]
        assert d.step_time_p50_s == pytest.approx(float(np.percentile(w, 50)), rel=1e-12)
        assert d.step_time_p95_s == pytest.approx(float(np.percentile(w, 95)), rel=1e-12)
        assert d.step_time_max_s == float(w.max())
        assert d.run_step_time_p50_s == pytest.approx(float(np.percentile(times[:i], 50)), rel=1e-12)
    assert i == 700 and w is not None


def test_metrics_reused_across_scrapes_render_what_fresh_ones_render():
    from prometheus_client import generate_latest

    from monitoring.collector import Metrics
    from monitoring.state import DeviceState, JobSummary

    now = 1000.0
    states = []
    for k, (st, loss, p50) in enumerate([(0.5, 1.0, 0.5), (0.5, 1.0, 0.5), (0.25, 0.0, 0.5), (0.25, -0.0, 0.0),
                                         (0.25, -0.0, -0.0), (0.75, 2.0, 0.5)]):
        devs = {}
        for r in range(3):
            devs[r] = DeviceState(job="j", rank=r, device=r, host="h", state="running" if k < 5 else "failed",
                                  epoch=1, global_step=7, straggler=(k == 1 and r == 0), step_time_s=st if r else 0.5,
                                  loss=loss if r == 1 else 1.0, step_time_p50_s=p50, steps_seen=10 + k * (r == 2),
                                  last_event_ts=now - 1,
                                  step_time_buckets=[1, k * (r == 2)] + [0] * 11, step_time_sum_s=0.1 * k)
        states.append(JobSummary(job="j", state="running", devices=devs))
    current = {"s": states[0]}
    c = Metrics(lambda: [current["s"]], clock=lambda: now, host="n")   # reused: its label cache carries over
    for s in states:
        current["s"] = s
        reference = Metrics(lambda: [s], clock=lambda: now, host="n")    # fresh: nothing cached
        assert c.render() == generate_latest(reference.registry)
