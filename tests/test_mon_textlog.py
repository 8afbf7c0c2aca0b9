"""Text logs not written by us: every line form, the seed's real 4-device log, msrun and model-zoo layouts."""
import re

import pytest

from cluster.contracts.events import EventWriter
from monitoring.sources import discover
from monitoring.summary import summarize
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
