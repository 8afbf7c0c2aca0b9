"""`pspnet-cluster summary`: aggregate a job's files once and print a table (rich) or JSON.

The steps column is the global step the inputs support ('-' and JSON null where they do not say it).
"""
from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence

from monitoring.sources import Found, JobMonitor, discover, is_job_dir
from monitoring.state import DeviceState, JobSummary


def group_paths(paths: Sequence[Any]) -> List[List[Path]]:
    """Each job dir is one group; all other paths together form one more group (in the order given)."""
    groups: List[List[Path]] = []
    rest: List[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such file or directory (give a job dir, a folder of logs, or files)")
        if is_job_dir(p):
            groups.append([p])
        else:
            rest.append(p)
    if rest:
        groups.append(rest)
    return groups


def read_all(monitor: JobMonitor, max_polls: int = 100000) -> None:
    """Poll until every source is consumed (a poll reads at most the tailer's max_read per file)."""
    for _ in range(max_polls):
        monitor.poll()
        if monitor.last_poll_bytes == 0:
            return


def summarize(paths: Sequence[Any], now: Optional[float] = None, devices: Optional[int] = None,
              **agg_kwargs: Any) -> List[JobSummary]:
    """One summary per group of ``paths`` (see ``group_paths``); ``devices`` forces how many devices
    a lone log of several devices' lines holds (see ``monitoring.sources``)."""
    return [job.summary for job in read_jobs(paths, now, devices, **agg_kwargs)]


@dataclass
class JobRead:
    """One group of inputs as read: its summary, its sources, and what was not recognised."""
    summary: JobSummary
    found: Found

    @property
    def readings(self) -> List[str]:
        """How the logs whose reading had to be chosen were read (one line each)."""
        return [s.reading for s in self.found.sources if s.reading]

    def unrecognised(self) -> Optional[str]:
        """Why nothing came of these inputs (None when something was recognised or a job dir may
        still be starting)."""
        s = self.summary
        if s.devices or s.eval_results or self.found.job_dir is not None:
            return None
        names = ", ".join(str(src.path) for src in self.found.sources[:5]) or "no log or event files"
        return (f"nothing recognised in {names}: expected msrun worker_<N>.log, model zoo LOG<N>/log.txt, "
                f"MindSpore LossMonitor/TimeMonitor lines ('epoch: 1 step: 10, loss is 0.5'), MindFormers "
                f"lines ('{{ Epoch:[  1/  2], step:[    1/   19], loss: ...'), or our event stream (.jsonl)")


def read_jobs(paths: Sequence[Any], now: Optional[float] = None, devices: Optional[int] = None,
              **agg_kwargs: Any) -> List[JobRead]:
    out = []
    for group in group_paths(paths):
        disc = functools.partial(discover, devices=devices)
        mon = JobMonitor(group, discover=disc, **agg_kwargs)
        read_all(mon)
        out.append(JobRead(mon.summary(now), disc(group)))
    return out


# ---------------------------------------------------------------- formatting helpers (shared with top/report)
def fmt_ms(seconds: Optional[float]) -> str:
    return "-" if seconds is None else f"{seconds * 1000.0:.3f}"


def fmt_num(value: Optional[float], digits: int = 4) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1e5 or (value != 0 and abs(value) < 10 ** -digits):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}f}"


def fmt_age(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def flags(dev: DeviceState) -> str:
    out = []
    if dev.straggler:
        out.append("STRAGGLER")
    if dev.stalled:
        out.append("STALLED")
    if dev.dead:
        out.append("DEAD" if dev.exit_code in (None, 0) else f"DEAD(exit {dev.exit_code})")
    return " ".join(out)


COLUMNS = ("rank", "dev", "host", "state", "epoch", "steps", "step ms p50", "p95", "max", "run p50", "run p95",
           "last ms", "img/s", "loss", "val loss", "mIoU", "best mIoU", "age", "flags")


def device_row(dev: DeviceState) -> List[str]:
    epoch = str(dev.epoch) + (f"/{dev.epochs}" if dev.epochs else "")
    return [str(dev.rank), "-" if dev.device is None else str(dev.device), dev.host or "-", dev.state, epoch,
            "-" if dev.global_step is None else str(dev.global_step), fmt_ms(dev.step_time_p50_s), fmt_ms(dev.step_time_p95_s),
            fmt_ms(dev.step_time_max_s), fmt_ms(dev.run_step_time_p50_s), fmt_ms(dev.run_step_time_p95_s),
            fmt_ms(dev.step_time_s), fmt_num(dev.images_per_s, 2), fmt_num(dev.loss), fmt_num(dev.val_loss),
            fmt_num(dev.miou), fmt_num(dev.best_miou), fmt_age(dev.last_event_age_s), flags(dev)]


def job_line(s: JobSummary) -> str:
    parts = [f"job {s.job or '-'}", f"state {s.state}", f"devices {len(s.devices)}", f"restarts {s.restarts}"]
    if s.total_images_per_s is not None:
        parts.append(f"total {s.total_images_per_s:.2f} img/s")
    if s.slowest_rank is not None:
        parts.append(f"slowest rank {s.slowest_rank}")
    parts.append("stragglers " + (",".join(map(str, s.stragglers)) if s.stragglers else "none")
                 + f" (margin {s.straggler_margin:.0%})")
    if s.dead:
        parts.append("dead " + ",".join(map(str, s.dead)))
    if s.stalled:
        parts.append("stalled " + ",".join(map(str, s.stalled)))
    return " | ".join(parts)


def summary_table(s: JobSummary) -> Any:
    from rich.table import Table
    table = Table(title=job_line(s), title_justify="left", show_lines=False)
    for col in COLUMNS:
        table.add_column(col, justify="left" if col in ("host", "state", "flags") else "right", no_wrap=True)
    for dev in s.devices.values():
        style = "red" if dev.dead else ("yellow" if dev.straggler else ("magenta" if dev.stalled else None))
        table.add_row(*device_row(dev), style=style)
    return table


def print_summaries(jobs: Iterable[Any], as_json: bool = False, file: Any = None) -> None:
    """Print summaries (``JobSummary``, or ``JobRead`` to add how each log was read)."""
    reads = [j if isinstance(j, JobRead) else None for j in jobs]
    jobs = [j.summary if isinstance(j, JobRead) else j for j in jobs]
    out = file or sys.stdout
    if as_json:
        dicts = []
        for s, r in zip(jobs, reads):
            d = s.to_dict()
            if r is not None:
                d["readings"] = r.readings
            dicts.append(d)
        json.dump({"jobs": dicts}, out, indent=2, default=str)
        out.write("\n")
        return
    from rich.console import Console
    console = Console(file=out, width=max(200, Console().width if file is None else 200))
    for s, r in zip(jobs, reads):
        console.print(summary_table(s))
        for line in (r.readings if r is not None else []):
            console.print(line, markup=False, highlight=False)
        for ev in s.eval_results:
            console.print(f"eval {ev.get('name', 'eval')}: mIoU {fmt_num(ev.get('miou'))} "
                          f"mAcc {fmt_num(ev.get('macc'))} allAcc {fmt_num(ev.get('allacc'))}")
        if not s.devices:
            console.print("no events or recognised log lines found")
