"""Text logs not written by us: every line form, the seed's real 4-device log, msrun and model-zoo layouts."""
import re

import pytest

from cluster.contracts.events import EventWriter
from monitoring.sources import discover
from monitoring.summary import read_jobs, summarize
from monitoring.textlog import TextLogParser, parse_text_line


@pytest.mark.parametrize("line, kind, fields", [
    ("epoch: 1 step: 1063, loss is 0.62", "step", {"epoch": 1, "step": 1063, "loss": 0.62}),
    ("[INFO] epoch: 3, step: 7, loss is 1.5e-2", "step", {"epoch": 3, "step": 7, "loss": 0.015}),
    ("epoch: 2 step: 5, loss is [0.25]", "step", {"epoch": 2, "step": 5, "loss": 0.25}),
    ("Train epoch time: 215749.452 ms, per step time: 1307.572 ms", "time",
     {"epoch_time_s": 215.749452, "step_time_s": 1.307572}),
    ("epoch time: 1234.5 ms, per step time: 12.345 ms", "time", {"epoch_time_s": 1.2345, "step_time_s": 0.012345}),
    ("Epoch: 49, val_loss: 0.31603706", "val", {"epoch": 49, "val_loss": 0.31603706}),
    ("=== epoch:   49, device id:  3, best miou: 0.6963, miou: 0.6825", "miou",
     {"epoch": 49, "best_miou": 0.6963, "miou": 0.6825}),
    ("Eval result: mIoU/mAcc/allAcc 0.7380/0.8229/0.9293.", "eval",
     {"name": "eval", "miou": 0.7380, "macc": 0.8229, "allacc": 0.9293}),
    ("VOC2012-AUG-ss:mIoU/mAcc/allAcc 0.6929/0.8305/0.9232.", "eval",
     {"name": "VOC2012-AUG-ss", "miou": 0.6929, "macc": 0.8305, "allacc": 0.9232}),
])
def test_every_line_form(line, kind, fields):
    rec = parse_text_line(line)
    assert rec is not None and rec.kind == kind
    assert rec.fields == fields
    assert parse_text_line(line.encode()).fields == fields       # bytes too


def test_device_id_comes_from_the_miou_line_and_other_lines_are_ignored():
    assert parse_text_line("=== epoch:    2, device id: 11, best miou: 0.1000, miou: 0.0500").device == 11
    for junk in ("", "epoch:", "loss is", "per step time: x ms", "=== epoch: a", "[WARNING] ME(123) something"):
        assert parse_text_line(junk) is None


def test_event_lines_inside_a_text_log():
    w = EventWriter(job="j", attempt=0, rank=2, world_size=4, device=2, host="h")
    from cluster.contracts.events import encode
    line = "2024-01-01 " + encode(w.event("step", epoch=1, step=1, global_step=1, steps_per_epoch=5, loss=1.0,
                                           step_time_s=0.5, images_per_s=4.0, lr=0.1))
    rec = parse_text_line(line)
    assert rec.kind == "event" and rec.fields["event"]["rank"] == 2


# The seed README's "训练结果" block: 4 devices, lines interleaved.  Documented assumption: the k-th
# line of a run of same-kind lines without a device id belongs to device k.
SEED_BEST = {0: 0.6969, 1: 0.7048, 2: 0.6772, 3: 0.6963}
SEED_LAST = {0: 0.6930, 1: 0.6990, 2: 0.6772, 3: 0.6842}
SEED_STEP_MS = {0: ["1307.572", "1292.189"], 1: ["1321.045", "1294.925"],
                2: ["1292.175", "1302.490"], 3: ["1324.773", "1322.469"]}
SEED_EPOCH_MS = {0: "213211.140", 1: "213662.691", 2: "214910.849", 3: "218207.310"}
SEED_VAL = {0: 0.31445614, 1: 0.21240959, 2: 0.24067509, 3: 0.2589045}


def _check_seed(summary):
    assert sorted(summary.devices) == [0, 1, 2, 3]
    for rank, dev in summary.devices.items():
        assert dev.device == rank
        assert dev.best_miou == SEED_BEST[rank]
        assert dev.miou == SEED_LAST[rank]
        assert dev.epoch == 50
        assert dev.val_loss == SEED_VAL[rank]
        # step times exactly as printed (ms with 3 decimals), in order
        assert [f"{v * 1000:.3f}" for _, v in dev.step_time_history] == SEED_STEP_MS[rank]
        assert f"{dev.step_time_s * 1000:.3f}" == SEED_STEP_MS[rank][-1]
        assert f"{dev.epoch_time_s * 1000:.3f}" == SEED_EPOCH_MS[rank]
        assert [e for e, _ in dev.miou_history] == [49, 50]
    assert summary.devices[1].best_miou == 0.7048


def test_seed_readme_4_device_log_summary(fixtures_dir):
    (s,) = summarize([fixtures_dir / "seed-modelzoo-readme.md"])
    _check_seed(s)
    assert s.eval_results == [{"name": "VOC2012-AUG-ss", "miou": 0.6929, "macc": 0.8305, "allacc": 0.9232}]


def _split_seed(text):
    """The seed block split into one log per device, by the same documented assumption."""
    per = {d: [] for d in range(4)}
    run_kind, k = None, 0
    for line in text.splitlines():
        m = re.search(r"device id:\s*(\d+)", line)
        if m:
            per[int(m.group(1))].append(line)
            run_kind = "miou"
            continue
        kind = "time" if "per step time" in line else "val" if "val_loss" in line else None
        if kind is None:
            continue
        k = k + 1 if kind == run_kind else 0
        run_kind = kind
        per[k].append(line)
    return per


@pytest.mark.parametrize("layout", ["LOG{n}/log.txt", "worker_{n}.log"])
def test_per_device_layouts_give_the_same_seed_numbers(tmp_path, fixtures_dir, layout):
    per = _split_seed((fixtures_dir / "seed-modelzoo-readme.md").read_text(encoding="utf-8"))
    for n, lines in per.items():
        p = tmp_path / "logs" / layout.format(n=n)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("[INFO] unrelated line\n" + "\n".join(lines) + "\n", encoding="utf-8")
    found = discover([tmp_path / "logs"])
    assert sorted(s.rank for s in found.sources) == [0, 1, 2, 3]
    (s,) = summarize([tmp_path / "logs"])
    _check_seed(s)


def test_one_device_log_on_device_3():
    p = TextLogParser()
    recs = [p.feed(line) for line in (
        "Train epoch time: 1000.000 ms, per step time: 10.000 ms",
        "Epoch: 1, val_loss: 0.5",
        "=== epoch:    1, device id:  3, best miou: 0.4000, miou: 0.4000",
        "Train epoch time: 1000.000 ms, per step time: 11.000 ms",
        "=== epoch:    2, device id:  3, best miou: 0.4500, miou: 0.4500",
    )]
    assert {r.rank for r in recs} == {0}
    assert recs[2].device == 3


def test_job_dir_without_events_reads_rank_logs(tmp_path):
    from cluster.contracts.events import encode
    logs = tmp_path / "job" / "logs"
    logs.mkdir(parents=True)
    (tmp_path / "job" / "job.json").write_text('{"state": "running"}')
    for r in range(2):
        w = EventWriter(job="job", attempt=0, rank=r, world_size=2, device=r, host="h")
        lines = ["some human line"]
        for i in range(3):
            lines.append(encode(w.event("step", epoch=1, step=i + 1, global_step=i + 1, steps_per_epoch=3,
                                        loss=1.0, step_time_s=0.2 * (r + 1), images_per_s=1.0, lr=0.1)))
        lines.append("Train epoch time: 600.000 ms, per step time: 200.000 ms")
        (logs / f"rank_{r}.log").write_text("\n".join(lines) + "\n")
    (s,) = summarize([tmp_path / "job"])
    assert s.devices[0].steps_seen == 3 and s.devices[1].steps_seen == 3
    assert s.devices[1].run_step_time_p50_s == pytest.approx(0.4)
    assert s.devices[0].mean_step_time_s == pytest.approx(0.2)


# ---------------------------------------------------------------- one file: one device or several
# MindSpore's LossMonitor (mindspore.train.LossMonitor, per_print_times=1 by default) prints
# "epoch: %s step: %s, loss is %s" with the step counted within the epoch, every step when data
# sinking is off; TimeMonitor prints "Train epoch time: %5.3f ms, per step time: %5.3f ms" at the end
# of each epoch.  The lines below are written from those formats.
def _one_device_loss_monitor(epochs=2, steps=5):
    lines = ["[WARNING] ME(1234:281473,MainProcess):2026-01-01-00:00:00.000.000 [mindspore/train] starting"]
    for e in range(1, epochs + 1):
        for s in range(1, steps + 1):
            lines.append(f"epoch: {e} step: {s}, loss is {2.0 - 0.1 * s:.4f}")
        lines.append(f"Train epoch time: {steps * 100 + e}.000 ms, per step time: {100 + e}.000 ms")
    return "\n".join(lines) + "\n"


def test_a_one_device_log_printing_every_step_is_one_device(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(_one_device_loss_monitor())
    (job,) = read_jobs([log])
    s = job.summary
    assert sorted(s.devices) == [0]
    dev = s.devices[0]
    assert dev.global_step == 10 and dev.epoch == 2 and dev.step == 5
    assert dev.loss == pytest.approx(1.5)
    assert f"{dev.step_time_s * 1000:.3f}" == "102.000"
    assert job.readings == ["train.log: read as one device (step and epoch numbers advance line by line)"]


def test_the_same_lines_in_a_per_device_layout_read_the_same(tmp_path):
    for layout in ("LOG0/log.txt", "worker_0.log", "train.log"):
        p = tmp_path / layout.replace("/", "_") / layout
        p.parent.mkdir(parents=True)
        p.write_text(_one_device_loss_monitor())
        (s,) = summarize([p.parent])
        assert sorted(s.devices) == [0] and s.devices[0].global_step == 10, layout


def test_two_devices_printing_every_step_in_turn_are_two_devices():
    p = TextLogParser()
    recs = []
    for step in (1, 2, 3):
        for dev in (0, 1):
            recs.append(p.feed(f"epoch: 1 step: {step}, loss is {dev + step / 10}"))
    assert [r.rank for r in recs] == [0, 1, 0, 1, 0, 1]
    assert [r.fields["global_step"] for r in recs] == [1, 1, 2, 2, 3, 3]
    assert p.layout().devices == 2
    assert "2 devices writing in turn" in p.layout().reason


def test_devices_option_forces_the_reading(tmp_path):
    # TimeMonitor alone: lines without a step number or device id, one per epoch
    log = tmp_path / "time.log"
    log.write_text("".join(f"Train epoch time: 1000.000 ms, per step time: {10 + k}.000 ms\n" for k in range(4)))
    (job,) = read_jobs([log])
    assert sorted(job.summary.devices) == [0] and "one device" in job.readings[0]
    assert "--devices N" in job.readings[0]
    (job,) = read_jobs([log], devices=4)
    assert sorted(job.summary.devices) == [0, 1, 2, 3]
    assert job.readings == ["time.log: read as 4 devices writing in turn (--devices)"]
    assert [f"{d.step_time_s * 1000:.0f}" for d in job.summary.devices.values()] == ["10", "11", "12", "13"]
    (job,) = read_jobs([fixture_path("seed-modelzoo-readme.md")], devices=1)
    assert sorted(job.summary.devices) == [0]


def fixture_path(name):
    from pathlib import Path
    return Path(__file__).parent / "fixtures" / name


def test_seed_log_says_it_was_read_as_four_devices():
    (job,) = read_jobs([fixture_path("seed-modelzoo-readme.md")])
    _check_seed(job.summary)
    assert job.readings == ["seed-modelzoo-readme.md: read as 4 devices writing in turn "
                            "(each step or epoch number appears up to 4 times in a row)"]


def test_eval_log_next_to_train_log_takes_no_rank(tmp_path):
    (tmp_path / "train.log").write_text(_one_device_loss_monitor())
    # the seed's eval.py result line (its README's evaluation block)
    (tmp_path / "eval.log").write_text("loading checkpoint\nVOC2012-AUG-ss:mIoU/mAcc/allAcc 0.6929/0.8305/0.9232.\n")
    (job,) = read_jobs([tmp_path])
    assert sorted(job.summary.devices) == [0]
    assert job.summary.devices[0].global_step == 10
    assert job.summary.eval_results[0]["miou"] == 0.6929


# ---------------------------------------------------------------- steps: what the lines carry
def test_global_step_is_unknown_until_the_lines_say_it(tmp_path):
    # data-sink LossMonitor: one line per epoch whose step is the epoch's size (1875 steps/epoch);
    # a log that starts at epoch 43 does not say how many steps came before.
    p = TextLogParser(rank=0)
    r1 = p.feed("epoch: 43 step: 1875, loss is 0.31")
    assert r1.fields["global_step"] is None
    r2 = p.feed("epoch: 44 step: 1875, loss is 0.30")
    assert r2.fields["global_step"] == 44 * 1875
    log = tmp_path / "sink.log"
    log.write_text("epoch: 43 step: 1875, loss is 0.31\n")
    import io
    import json
    from monitoring.summary import print_summaries
    jobs = read_jobs([log])
    out = io.StringIO()
    print_summaries(jobs, as_json=True, file=out)
    dev = json.loads(out.getvalue())["jobs"][0]["devices"]["0"]
    assert dev["global_step"] is None and dev["epoch"] == 43
    out = io.StringIO()
    print_summaries(jobs, file=out)
    row = [ln for ln in out.getvalue().splitlines() if "0.3100" in ln][0]
    assert re.search(r"\b43\s*\W\s*-\s", row), row            # epoch 43, steps unknown


# ---------------------------------------------------------------- MindFormers
# MindFormers' MFLossMonitor (mindformers/core/callback/callback.py) logs
# "{ Epoch:[%3d/%3d], step:[%5d/%5d], loss: %5.3f, per_step_time: %dms, lr: %s, overflow cond: %s,
# loss_scale: %s, ..." in sink mode and "loss:[%5.3f/%5.3f]" (current/mean) otherwise, the step
# counted within the epoch; its PyNative trainer (mindformers/pynative/callback/loss_callback.py)
# logs "{ step:[%5d/%5d], loss: %f, per_step_time: %dms, ..." with the global step.
MF_LINES = [
    "2026-01-01 10:00:00,000 - mindformers[mindformers/core/callback/callback.py:560] - INFO - "
    "{ Epoch:[  1/  2], step:[    1/   19], loss: 11.200, per_step_time: 103328ms, lr: 1e-05, "
    "overflow cond: False, loss_scale: 1.0, global_norm: [2.1]",
    "2026-01-01 10:00:00,000 - mindformers[mindformers/core/callback/callback.py:560] - INFO - "
    "  5.3% |██                                                | 0.00968 samples/s/p  0:31:00 }",
    "2026-01-01 10:01:40,000 - mindformers[mindformers/core/callback/callback.py:560] - INFO - "
    "{ Epoch:[  1/  2], step:[    2/   19], loss:[10.900/11.050], per_step_time: 98000ms, lr: 1e-05, "
    "overflow cond: False, loss_scale: 1.0",
    "2026-01-01 10:30:00,000 - mindformers[mindformers/core/callback/callback.py:560] - INFO - "
    "{ Epoch:[  2/  2], step:[    3/   19], loss: 9.750, per_step_time: 97500ms, lr: 1e-05, "
    "overflow cond: False, loss_scale: 1.0",
]


def test_mindformers_epoch_lines():
    recs = [parse_text_line(line) for line in MF_LINES]
    assert recs[1] is None
    assert recs[0].kind == "step" and recs[0].fields == {
        "epoch": 1, "epochs": 2, "step": 1, "steps_per_epoch": 19, "global_step": 1, "loss": 11.2,
        "step_time_s": 103.328}
    assert recs[2].fields["loss"] == 10.9 and recs[2].fields["global_step"] == 2
    assert recs[3].fields["global_step"] == 19 + 3


def test_mindformers_step_only_line():
    rec = parse_text_line("[INFO] 2026-06-09 10:20:30 [loss_callback.py:231] _print_log: { step:[  100/ 1000], "
                          "loss:   2.345678, per_step_time:    850ms, lr: 1.000000e-04, grad_norm:   1.234000, "
                          "throughput:  12.34T }")
    assert rec.kind == "step"
    assert rec.fields["global_step"] == 100 and rec.fields["loss"] == 2.345678
    assert rec.fields["step_time_s"] == 0.85 and rec.fields["epoch"] is None


def test_mindformers_log_summary(tmp_path):
    # MindFormers writes output/log/rank_<N>/info.log
    for rank in (0, 1):
        p = tmp_path / "output" / "log" / f"rank_{rank}" / "info.log"
        p.parent.mkdir(parents=True)
        p.write_text("\n".join(MF_LINES) + "\n")
    (s,) = summarize([tmp_path / "output"])
    assert sorted(s.devices) == [0, 1]
    dev = s.devices[1]
    assert (dev.epoch, dev.epochs, dev.steps_per_epoch, dev.global_step) == (2, 2, 19, 22)
    assert dev.loss == 9.75 and dev.step_time_s == 97.5
    assert dev.step_time_max_s == pytest.approx(103.328)


# ---------------------------------------------------------------- nothing recognised
def test_summary_of_an_unrecognised_log_fails_clearly(tmp_path, capsys):
    from monitoring.cli import cmd_summary
    import argparse
    log = tmp_path / "other.log"
    log.write_text("hello\nIteration 5: accuracy 0.3\n")
    args = argparse.Namespace(paths=[str(log)], json=False, devices=None, window=100, straggler_margin=0.2,
                              stale_after=300.0)
    assert cmd_summary(args) == 2
    err = capsys.readouterr().err
    assert "nothing recognised in" in err and "other.log" in err and "MindFormers" in err
