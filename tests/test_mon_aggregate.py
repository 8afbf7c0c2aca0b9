"""Aggregation: percentiles, stragglers, states, restarts, job.json, and folding in batches."""
import io
import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
import pytest

from monitoring.aggregate import EXACT_LIMIT, Aggregator, RunQuantiles, Series, stragglers
from monitoring.sources import JobMonitor
from cluster.contracts.events import EventWriter, parse_line
from monitoring.synthetic import rank_events, step_lines, write_synthetic_job


def _writer(rank=0, attempt=0, world_size=2):
    return EventWriter(job="j", attempt=attempt, rank=rank, world_size=world_size, device=rank + 4, host="h",
                       stream=io.StringIO())


def _feed_steps(agg, rank, times, ts0=100.0):
    w = _writer(rank)
    for i, t in enumerate(times):
        ev = w.event("step", epoch=1, step=i + 1, global_step=i + 1, steps_per_epoch=len(times), loss=1.0,
                     step_time_s=t, images_per_s=2 / t, lr=0.1)
        ev["ts"] = ts0 + i
        agg.feed_event(ev)


def test_window_and_run_percentiles_are_exact_for_short_runs():
    rng = np.random.default_rng(1)
    times = rng.uniform(0.05, 0.5, size=300)
    agg = Aggregator(window=50)
    _feed_steps(agg, 0, times)
    dev = agg.snapshot(now=1000.0).devices[0]
    last = times[-50:]
    assert dev.step_time_p50_s == pytest.approx(np.percentile(last, 50))
    assert dev.step_time_p95_s == pytest.approx(np.percentile(last, 95))
    assert dev.step_time_max_s == pytest.approx(last.max())
    assert dev.run_step_time_p50_s == pytest.approx(np.percentile(times, 50))
    assert dev.run_step_time_p95_s == pytest.approx(np.percentile(times, 95))
    assert dev.run_step_time_max_s == pytest.approx(times.max())
    assert dev.steps_seen == 300
    assert dev.step_time_s == pytest.approx(times[-1])


def test_run_percentiles_switch_to_a_bounded_histogram_within_one_percent():
    rng = np.random.default_rng(2)
    values = rng.lognormal(mean=-1.0, sigma=0.4, size=EXACT_LIMIT * 5)
    q = RunQuantiles()
    for part in np.array_split(values, 7):
        q.add(part.tolist())
    assert q._exact is None and q._hist is not None          # bounded memory after EXACT_LIMIT
    assert q.count == values.size
    assert q.max == pytest.approx(values.max())
    for p in (0.5, 0.95):
        assert q.quantile(p) == pytest.approx(np.percentile(values, p * 100), rel=0.011)


def test_series_downsampling_keeps_evenly_spaced_points():
    s = Series(cap=16)
    s.extend(np.arange(1000, dtype=float).tolist())
    assert len(s.x) <= 32
    assert s.x == [int(v) for v in s.y]
    steps = np.diff(s.x)
    assert len(set(steps.tolist())) == 1 and steps[0] == s.stride


def test_straggler_needs_margin_over_median_of_the_others():
    assert stragglers({0: 1.0, 1: 1.0, 2: 1.0, 3: 1.3}, 0.2) == [3]
    assert stragglers({0: 1.0, 1: 1.0, 2: 1.0, 3: 1.15}, 0.2) == []
    assert stragglers({0: 1.0, 1: 1.0, 2: 1.0, 3: 1.15}, 0.1) == [3]
    assert stragglers({0: 1.0}, 0.2) == []


def test_synthetic_slow_device_is_flagged_and_slowest(tmp_path):
    root = write_synthetic_job(tmp_path / "job", ranks=4, slow_rank=2, slow_factor=1.5, steps_per_epoch=30)
    mon = JobMonitor([root])
    mon.poll()
    s = mon.summary()
    assert s.stragglers == [2]
    assert s.slowest_rank == 2
    assert [r for r, d in s.devices.items() if d.straggler] == [2]
    assert s.state == "succeeded"
    assert all(d.state == "finished" for d in s.devices.values())
    # total images/s is the sum of the devices' last images/s
    assert s.total_images_per_s == pytest.approx(sum(d.images_per_s for d in s.devices.values()))
    # a looser margin clears the flag
    mon2 = JobMonitor([root], straggler_margin=0.6)
    mon2.poll()
    assert mon2.summary().stragglers == []


def test_state_transitions_and_restart_attempts():
    agg = Aggregator()
    w = _writer(0)
    agg.feed_event(w.event("start", pid=1, mode="dynamic", backend="cpu", config_sha="x", mindspore="2"))
    assert agg.snapshot().devices[0].state == "starting"
    agg.feed_event(w.event("compiled", seconds=1.5))
    d = agg.snapshot().devices[0]
    assert d.state == "running" and d.compile_s == 1.5
    agg.feed_event(w.event("step", epoch=1, step=1, global_step=1, steps_per_epoch=10, loss=1.0,
                           step_time_s=0.1, images_per_s=20.0, lr=0.1))
    agg.feed_event(w.event("epoch", epoch=1, epoch_time_s=1.0, mean_step_time_s=0.1, val_loss=0.5, miou=0.4,
                           macc=0.5, allacc=0.8, best_miou=0.4))
    agg.feed_event(w.event("error", message="boom", where="x.py:1"))
    d = agg.snapshot().devices[0]
    assert d.state == "failed" and d.dead and d.error == "boom"
    assert d.val_loss == 0.5 and d.miou == 0.4 and d.best_miou == 0.4
    # the orchestrator restarts the rank: attempt 1 resets state and error, keeps best mIoU
    w1 = _writer(0, attempt=1)
    agg.feed_event(w1.event("start", pid=2, mode="dynamic", backend="cpu", config_sha="x", mindspore="2"))
    d = agg.snapshot().devices[0]
    assert d.state == "starting" and d.attempt == 1 and d.error is None and not d.dead
    agg.feed_event(w1.event("resumed", path="c.ckpt", epoch=1, global_step=10))
    agg.feed_event(w1.event("epoch", epoch=2, epoch_time_s=1.0, mean_step_time_s=0.1, miou=0.3, best_miou=0.4))
    agg.feed_event(w1.event("finished", epochs=2, best_miou=0.4, wall_s=3.0))
    s = agg.snapshot()
    d = s.devices[0]
    assert d.state == "finished" and d.best_miou == 0.4 and d.miou == 0.3 and d.epochs == 2
    assert s.restarts == 1
    assert [m for _, m in d.miou_history] == [0.4, 0.3]


def test_job_json_marks_dead_ranks_and_restarts(tmp_path):
    root = write_synthetic_job(tmp_path / "job", ranks=3, failed_rank=1, state="failed")
    info = json.loads((root / "job.json").read_text())
    info["attempts"].append({"attempt": 1, "state": "failed", "ranks": {str(r): {"exit_code": c}
                                                                      for r, c in enumerate([0, -9, 0])}})
    (root / "job.json").write_text(json.dumps(info))
    mon = JobMonitor([root])
    mon.poll()
    s = mon.summary()
    assert s.state == "failed" and s.restarts == 1
    assert s.dead == [1]
    assert s.devices[1].exit_code == -9 and s.devices[1].state == "failed"
    assert s.devices[0].state == "finished" and not s.devices[0].dead


def test_job_json_is_read_tolerantly(tmp_path):
    root = write_synthetic_job(tmp_path / "job", ranks=2)
    for text in ("", "not json", "[1, 2]", '{"state": 5, "attempts": "x"}', '{"attempts": [7, {"ranks": 3}]}'):
        (root / "job.json").write_text(text)
        mon = JobMonitor([root])
        mon.poll()
        s = mon.summary()
        assert sorted(s.devices) == [0, 1]


def test_stalled_running_rank(tmp_path):
    root = write_synthetic_job(tmp_path / "job", ranks=2, finish=False, state="running", t0=1000.0)
    mon = JobMonitor([root], stale_after_s=60.0)
    mon.poll()
    last = max(d.last_event_ts for d in mon.summary().devices.values())
    assert mon.summary(now=last + 10).stalled == []
    s = mon.summary(now=last + 120)
    assert s.stalled == [0, 1] and all(d.stalled for d in s.devices.values())
    assert s.devices[0].last_event_age_s == pytest.approx(last + 120 - s.devices[0].last_event_ts)


def _fields(s):
    out = {}
    for r, d in s.devices.items():
        dd = d.to_dict()
        out[r] = dd
    return out


@pytest.mark.parametrize("garble, n", [(False, 2500), (True, 2500), (False, 2150), ("null", 2150)])
def test_a_file_folded_at_once_equals_the_same_file_line_by_line(garble, n):
    # n=2150: an epoch event among the last lines
    lines = list(step_lines(3, n, steps_per_epoch=700))
    if garble == "null":          # a diverged loss is written as null: gaps in the loss series, same positions
        import re
        for i in range(3, n, 7):
            lines[i] = re.sub(r'"loss":[^,]*', '"loss":null', lines[i])
    elif garble:
        lines.insert(100, '{"v":1,"event":"step","rank":3,"step_time_s":\n')   # torn line
        lines.insert(200, "garbage\n")
        lines.insert(300, '{"v":1,"event":"step","rank":3,"step_time_s":NaN,"loss":0.5}\n')   # not JSON for orjson
    data = "".join(lines).encode()
    whole = Aggregator()
    assert whole.feed_lines(data) == len(lines)
    single = Aggregator()
    for line in data.split(b"\n"):
        single.feed_lines(line + b"\n")
    a, b = _fields(whole.snapshot(now=2e9)), _fields(single.snapshot(now=2e9))
    assert a.keys() == b.keys() == {3}
    sum_a, sum_b = a[3].pop("step_time_sum_s"), b[3].pop("step_time_sum_s")
    assert sum_a == pytest.approx(sum_b, rel=1e-12)       # summed in another order
    assert a[3] == b[3]
    assert a[3]["steps_seen"] == n - 3 + (garble is True)     # epoch events after steps 700, 1400, 2100
    assert len(a[3]["step_time_history"]) == 120
    assert whole.series(3) == single.series(3)
    assert len(whole.series(3)["loss"]) > 100
    if garble == "null":
        assert a[3]["loss"] is not None and all(v is not None for _, v in a[3]["loss_history"])


def test_chunks_of_several_ranks_fall_back_to_lines():
    text = rank_events("j", 0, 2, steps_per_epoch=50) + rank_events("j", 1, 2, steps_per_epoch=50, step_time_s=0.3)
    agg = Aggregator()
    agg.feed_lines(text.encode())
    s = agg.snapshot()
    assert sorted(s.devices) == [0, 1]
    assert s.devices[0].steps_seen == s.devices[1].steps_seen == 100
    assert s.devices[1].run_step_time_p50_s == pytest.approx(0.3, rel=0.03)


def test_job_monitor_follows_growing_files_and_late_ranks(tmp_path):
    root = tmp_path / "job"
    (root / "events").mkdir(parents=True)
    text0 = rank_events("job", 0, 2, epochs=1, steps_per_epoch=40, finish=True)
    cut = text0.index("\n", len(text0) // 2) + 10          # in the middle of a line
    (root / "events" / "rank_0.jsonl").write_text(text0[:cut])
    mon = JobMonitor([root])
    first = mon.poll()
    s = mon.summary()
    assert list(s.devices) == [0] and s.devices[0].state == "running"
    seen = s.devices[0].steps_seen
    assert 0 < seen < 40
    assert mon.poll() == 0                                 # nothing new, nothing read
    with open(root / "events" / "rank_0.jsonl", "a") as fh:
        fh.write(text0[cut:])
    (root / "events" / "rank_1.jsonl").write_text(rank_events("job", 1, 2, epochs=1, steps_per_epoch=40))
    second = mon.poll()
    assert first + second == len(text0.splitlines()) + len(rank_events("job", 1, 2, epochs=1,
                                                                          steps_per_epoch=40).splitlines())
    s = mon.summary()
    assert sorted(s.devices) == [0, 1]
    assert s.devices[0].steps_seen == 40 and s.devices[0].state == "finished"
    assert s.devices[1].steps_seen == 40


def test_orchestrator_job_json_form_ranks_and_failure(tmp_path):
    root = write_synthetic_job(tmp_path / "job", ranks=3, finish=False, state="running")
    info = json.loads((root / "job.json").read_text())
    info.update(state="restarting", restarts=1)
    info["attempts"][0].update(state="failed", failure={
        "rank": 2, "name": "rank_2", "reason": "hang", "exit_code": -9, "signal": "SIGKILL",
        "message": "rank 2 made no progress for 60 s"})
    for r, code in (("0", -15), ("1", -15), ("2", -9)):
        info["attempts"][0]["ranks"][r]["exit_code"] = code
    info["attempts"][0]["ranks"]["scheduler"] = {"pid": 1, "exit_code": 0}
    info["attempts"].append({"attempt": 1, "state": "running", "ranks": {"0": {"exit_code": None}}})
    (root / "job.json").write_text(json.dumps(info))
    mon = JobMonitor([root])
    mon.poll()
    s = mon.summary()
    assert s.state == "restarting" and s.restarts == 1
    assert s.dead == []                          # the new attempt's ranks have not ended
    info["attempts"].pop()
    info["state"] = "failed"
    (root / "job.json").write_text(json.dumps(info))
    mon.poll()
    s = mon.summary()
    assert s.state == "failed" and s.dead == [0, 1, 2]
    assert s.devices[2].error == "rank 2 made no progress for 60 s" and s.devices[2].exit_code == -9
    assert all(d.state == "failed" for d in s.devices.values())


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.integers(0, 2000), st.floats(0.001, 10.0), max_size=40), st.floats(0.0, 1.0))
def test_stragglers_equal_the_definition(p50, margin):
    expected = [r for r in sorted(p50)
                if len(p50) > 1 and float(np.median([x for q, x in p50.items() if q != r])) * (1 + margin) < p50[r]]
    assert stragglers(p50, margin) == expected


def test_series_carry_val_loss_and_miou_per_epoch_for_the_learning_curve():
    agg = Aggregator()
    w = _writer(0)
    for epoch, (vl, miou) in enumerate([(2.5, 0.1), (1.2, 0.4), (0.6, 0.7)], start=1):
        agg.feed_event(w.event("epoch", epoch=epoch, val_loss=vl, miou=miou, best_miou=miou))
    agg.feed_event(w.event("epoch", epoch=4))               # an epoch without validation adds nothing
    s = agg.series(0)
    assert s["val_loss"] == [(1, 2.5), (2, 1.2), (3, 0.6)]
    assert s["miou"] == [(1, 0.1), (2, 0.4), (3, 0.7)]
    assert agg.series(7)["val_loss"] == []
