"""The end-of-job report: ``report/summary.md`` with the per-device table and PNG plots.

``write_report(job_dir)`` reads the job's events (or logs) once, aggregates them, and writes into
``<job_dir>/report/`` (or ``out_dir``):

* ``summary.md``: job state, restarts, throughput, stragglers, dead ranks, the per-device table,
  eval results, and links to the plots;
* ``step_time.png``: step time per device over the run (downsampled whole-run series);
* ``loss.png``: training loss per device over the run;
* ``miou.png``: mIoU and val loss per device per epoch (only when some epoch was validated).

Plots are made with matplotlib's Agg backend (no display needed).  Every file is written atomically,
so a report being rewritten is never seen half-written.  The orchestrator calls ``write_report``
at the end of a job; ``pspnet-cluster report JOB_DIR`` does the same by hand.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from cluster.contracts.jobdir import REPORT, atomic_write_bytes
from monitoring.sources import JobMonitor
from monitoring.state import JobSummary
from monitoring.summary import COLUMNS, device_row, fmt_num, job_line, read_all

PLOTS = ("step_time.png", "loss.png", "miou.png")


def write_report(job_dir: Any, out_dir: Optional[Any] = None, now: Optional[float] = None,
                 **agg_kwargs: Any) -> Path:
    """Write the report of ``job_dir``; returns the path of summary.md."""
    job_dir = Path(job_dir)
    if not job_dir.exists():
        raise FileNotFoundError(f"{job_dir}: no such job directory")
    out = Path(out_dir) if out_dir is not None else job_dir / REPORT
    out.mkdir(parents=True, exist_ok=True)
    mon = JobMonitor([job_dir], **agg_kwargs)
    read_all(mon)
    summary = mon.summary(now)
    series = {rank: mon.aggregator.series(rank) for rank in summary.devices}
    path = out / "summary.md"
    _write(path, summary_markdown(summary, []).encode("utf-8"))      # the table first: kept if plotting fails
    try:
        plots = make_plots(summary, series, out)
    except Exception as exc:  # noqa: BLE001 - a broken plot must not cost the report
        _write(path, (summary_markdown(summary, []) + f"\nPlots could not be drawn: {type(exc).__name__}: "
                      f"{exc}\n").encode("utf-8"))
        return path
    _write(path, summary_markdown(summary, plots).encode("utf-8"))
    return path


def _write(path: Path, data: bytes) -> None:
    """Atomic write, then the usual permissions (the temp file behind the atomic write is private)."""
    atomic_write_bytes(path, data)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(path, 0o666 & ~umask)
    except OSError:
        pass


def _label(summary: JobSummary, rank: int) -> str:
    dev = summary.devices[rank]
    return f"rank {rank}" + (f" (device {dev.device})" if dev.device is not None and dev.device != rank else "")


def make_plots(summary: JobSummary, series: Dict[int, Dict[str, list]], out: Path) -> List[str]:
    """Write the PNGs that have data; returns their file names."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    written: List[str] = []

    def save(fig: Any, name: str) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        _write(out / name, buf.getvalue())
        written.append(name)

    # step time per device (whole run, downsampled); text logs give one mean per epoch
    fig, ax = plt.subplots(figsize=(9, 4.5))
    drawn = False
    for rank, s in sorted(series.items()):
        if s["step_time_s"]:
            ax.plot(s["step_x"], [v * 1000.0 for v in s["step_time_s"]], lw=0.8, label=_label(summary, rank))
            drawn = True
    ax.set_xlabel("reported step (index within the run; evenly thinned for long runs)")
    ax.set_ylabel("step time (ms)")
    ax.set_title("Step time per device")
    if drawn:
        ax.legend(fontsize="small", ncol=2)
    else:
        ax.text(0.5, 0.5, "no step times recorded", ha="center", va="center", transform=ax.transAxes)
    save(fig, "step_time.png")

    fig, ax = plt.subplots(figsize=(9, 4.5))
    drawn = False
    for rank, s in sorted(series.items()):
        if s["loss"]:
            ax.plot(s["loss_x"], s["loss"], lw=0.8, label=_label(summary, rank))
            drawn = True
    ax.set_xlabel("reported step (index within the run)")
    ax.set_ylabel("training loss")
    ax.set_title("Loss per device")
    if drawn:
        ax.legend(fontsize="small", ncol=2)
    else:
        ax.text(0.5, 0.5, "no losses recorded", ha="center", va="center", transform=ax.transAxes)
    save(fig, "loss.png")

    if any(s["miou"] for s in series.values()):
        # mIoU and val loss per epoch on one chart: the learning curve (the train loss is loss.png)
        fig, ax = plt.subplots(figsize=(9, 4.5))
        ax2 = ax.twinx()
        for rank, s in sorted(series.items()):
            pts = [(e, v) for e, v in s["miou"] if e is not None and v is not None]
            if pts:
                ax.plot([e for e, _ in pts], [v for _, v in pts], marker="o", ms=3, lw=1,
                        label=f"mIoU, {_label(summary, rank)}")
            vl = [(e, v) for e, v in s.get("val_loss", []) if e is not None and v is not None]
            if vl:
                ax2.plot([e for e, _ in vl], [v for _, v in vl], marker="x", ms=3, lw=1, ls="--",
                         label=f"val loss, {_label(summary, rank)}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("mIoU")
        ax2.set_ylabel("val loss (dashed)")
        ax.set_title("mIoU and val loss per epoch")
        handles = ax.get_legend_handles_labels()
        handles2 = ax2.get_legend_handles_labels()
        ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], fontsize="small", ncol=2)
        save(fig, "miou.png")
    return written


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def summary_markdown(summary: JobSummary, plots: List[str]) -> str:
    lines = [f"# Job report: {summary.job or '-'}", "", _md_escape(job_line(summary)), ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for dev in summary.devices.values():
        lines.append("| " + " | ".join(_md_escape(c) for c in device_row(dev)) + " |")
    if not summary.devices:
        lines.append("")
        lines.append("No events or recognised log lines were found.")
    lines.append("")
    lines.append("Step times in milliseconds: p50/p95/max over the last steps (sliding window), "
                 "run p50/p95 over the whole run.")
    errors = [(r, d.error) for r, d in summary.devices.items() if d.error]
    if errors:
        lines += ["", "## Errors", ""]
        lines += [f"- rank {r}: {_md_escape(e or '')}" for r, e in errors]
    if summary.eval_results:
        lines += ["", "## Evaluation", ""]
        for ev in summary.eval_results:
            lines.append(f"- {ev.get('name', 'eval')}: mIoU {fmt_num(ev.get('miou'))}, "
                         f"mAcc {fmt_num(ev.get('macc'))}, allAcc {fmt_num(ev.get('allacc'))}")
    if plots:
        lines += ["", "## Plots", ""]
        titles = {"step_time.png": "Step time per device", "loss.png": "Loss per device",
                  "miou.png": "mIoU and val loss per epoch"}
        for name in plots:
            lines += [f"![{titles.get(name, name)}]({name})", ""]
    return "\n".join(lines).rstrip() + "\n"
