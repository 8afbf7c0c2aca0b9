"""The summary, top and report commands on synthetic job dirs written with EventWriter-formatted lines."""
import json

import matplotlib.image as mpimg
import pytest

from monitoring.synthetic import write_synthetic_job
from monitoring.top import progress_bar, sparkline
from monitoring.state import DeviceState
from orchestrator.cli import main


@pytest.fixture
def job(tmp_path):
    return write_synthetic_job(tmp_path / "job-a", ranks=4, slow_rank=3, slow_factor=1.6, failed_rank=1,
                               state="failed", epochs=3, steps_per_epoch=25)


def test_summary_json(job, capsys):
    assert main(["summary", str(job), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (j,) = out["jobs"]
    assert j["job"] == "job-a" and j["state"] == "failed"
    assert j["stragglers"] == [3] and j["slowest_rank"] == 3 and j["dead"] == [1]
    devs = j["devices"]
    assert sorted(devs) == ["0", "1", "2", "3"]
    assert devs["0"]["steps_seen"] == 75 and devs["0"]["epoch"] == 3 and devs["0"]["state"] == "finished"
    assert devs["1"]["state"] == "failed" and devs["1"]["error"].startswith("RuntimeError")
    assert devs["3"]["step_time_p50_s"] == pytest.approx(0.16, rel=0.03)
    assert devs["0"]["best_miou"] == pytest.approx(0.7)


def test_summary_table_and_several_paths(job, tmp_path, capsys):
    other = write_synthetic_job(tmp_path / "job-b", ranks=2)
    assert main(["summary", str(job), str(other)]) == 0
    out = capsys.readouterr().out
    assert "job job-a" in out and "job job-b" in out
    assert "STRAGGLER" in out and "DEAD(exit 1)" in out
    assert "stragglers 3 (margin 20%)" in out


def test_summary_of_a_missing_path_is_a_clear_error(tmp_path, capsys):
    assert main(["summary", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "no such file" in err


def test_top_once(job, capsys):
    assert main(["top", str(job), "--once"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert len(rows) == 4
    assert "STRAGGLER" in rows[3] and "DEAD exit 1" in rows[1] and "finished" in rows[0]
    assert "e3/3 100%" in rows[0]          # planned epochs come from the finished event
    assert any(ch in out for ch in "▁▂▃▄▅▆▇█")


def test_top_live_loop_follows_a_growing_job(tmp_path):
    import io
    from rich.console import Console
    from monitoring.top import run_top
    root = write_synthetic_job(tmp_path / "live", ranks=2, finish=False, state="running")
    buf = io.StringIO()
    assert run_top([root], interval=0.05, console=Console(file=buf, width=200), max_frames=2) == 0
    assert "rank" in buf.getvalue()


def test_sparkline_and_progress_bar():
    assert sparkline([1, 2, 3, 4, 5, 6, 7, 8]) == "▁▂▃▄▅▆▇█"
    assert sparkline([2, 2, 2]) == "▁▁▁"
    assert sparkline([]) == ""
    d = DeviceState(job="j", rank=0, epoch=2, epochs=10, step=5, steps_per_epoch=10)
    assert progress_bar(d, width=10) == "█████░░░░░ e2/10  50%"


def test_report_files(job):
    assert main(["report", str(job)]) == 0
    rep = job / "report"
    md = (rep / "summary.md").read_text()
    assert "| rank |" in md and "STRAGGLER" in md and "## Errors" in md
    for name in ("step_time.png", "loss.png", "miou.png"):
        assert f"]({name})" in md
        data = (rep / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        img = mpimg.imread(rep / name)
        assert img.shape[0] > 100 and img.shape[1] > 100


def test_write_report_api_on_an_empty_job(tmp_path):
    from monitoring.report import write_report
    (tmp_path / "empty" / "events").mkdir(parents=True)
    path = write_report(tmp_path / "empty")
    assert path.name == "summary.md" and "No events" in path.read_text()
    assert (path.parent / "step_time.png").exists() and not (path.parent / "miou.png").exists()


def test_report_keeps_the_table_when_plotting_fails(job, monkeypatch):
    import monitoring.report as report

    def broken(*args, **kwargs):
        raise RuntimeError("no backend")

    monkeypatch.setattr(report, "make_plots", broken)
    md = report.write_report(job).read_text()
    assert "| rank |" in md and "Plots could not be drawn: RuntimeError: no backend" in md
