"""`pspnet-cluster top`: a live terminal dashboard, one row per device (rich Live).

Each refresh polls the job's files incrementally (only new bytes) and redraws: epoch progress bar,
step time (last and window p50) with a sparkline of recent steps, images/s, loss, mIoU / best, state
and the last-event age.  Stragglers are yellow, stalled ranks magenta, dead ranks red.
``--once`` reads everything there is, prints one frame and exits.
"""
from __future__ import annotations

import time
from typing import Any, List, Optional, Sequence

from monitoring.sources import JobMonitor
from monitoring.state import DeviceState, JobSummary
from monitoring.summary import fmt_age, fmt_ms, fmt_num, group_paths, job_line, read_all

SPARK = "▁▂▃▄▅▆▇█"
ENDED = ("succeeded", "failed", "stopped")


def sparkline(values: Sequence[float], width: int = 20) -> str:
    """Recent values as block characters, scaled between their min and max (flat -> lowest block)."""
    vals = [v for v in values if v is not None][-width:]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    span = hi - lo
    if span <= 0:
        return SPARK[0] * len(vals)
    return "".join(SPARK[min(len(SPARK) - 1, int((v - lo) / span * (len(SPARK) - 1) + 0.5))] for v in vals)


def progress_bar(dev: DeviceState, width: int = 12) -> str:
    """Progress in the current epoch (steps) with the epoch count: ``[#####-------] e3/50``."""
    frac: Optional[float] = None
    if dev.steps_per_epoch:
        frac = min(1.0, max(0.0, dev.step / dev.steps_per_epoch))
    filled = int(round((frac or 0.0) * width))
    bar = "█" * filled + "░" * (width - filled)
    epoch = f"e{dev.epoch}" + (f"/{dev.epochs}" if dev.epochs else "")
    pct = "" if frac is None else f" {frac * 100:3.0f}%"
    return f"{bar} {epoch}{pct}"


def state_text(dev: DeviceState) -> str:
    tags = [dev.state]
    if dev.straggler:
        tags.append("STRAGGLER")
    if dev.stalled:
        tags.append("STALLED")
    if dev.dead:
        tags.append("DEAD" if dev.exit_code in (None, 0) else f"DEAD exit {dev.exit_code}")
    return " ".join(tags)


def render(summary: JobSummary) -> Any:
    """One frame: a rich Table for a JobSummary."""
    from rich.table import Table
    table = Table(title=job_line(summary), title_justify="left", expand=False)
    for col, justify in (("rank", "right"), ("dev", "right"), ("host", "left"), ("progress", "left"),
                         ("step ms", "right"), ("p50", "right"), ("recent steps", "left"), ("img/s", "right"),
                         ("loss", "right"), ("mIoU", "right"), ("best", "right"), ("age", "right"),
                         ("state", "left")):
        table.add_column(col, justify=justify, no_wrap=True)
    for dev in summary.devices.values():
        style = ("bold red" if dev.dead else "yellow" if dev.straggler else "magenta" if dev.stalled
                 else "green" if dev.state == "finished" else None)
        table.add_row(str(dev.rank), "-" if dev.device is None else str(dev.device), dev.host or "-",
                      progress_bar(dev), fmt_ms(dev.step_time_s), fmt_ms(dev.step_time_p50_s),
                      sparkline([v for _, v in dev.step_time_history]), fmt_num(dev.images_per_s, 2),
                      fmt_num(dev.loss), fmt_num(dev.miou), fmt_num(dev.best_miou),
                      fmt_age(dev.last_event_age_s), state_text(dev), style=style)
    if not summary.devices:
        table.caption = "waiting for events..."
    return table


def run_top(paths: Sequence[Any], interval: float = 1.0, once: bool = False, exit_when_done: bool = False,
            console: Any = None, max_frames: Optional[int] = None, **agg_kwargs: Any) -> int:
    """Follow ``paths`` (a job dir, usually) and redraw every ``interval`` seconds until Ctrl-C."""
    from rich.console import Console
    groups = group_paths(paths)
    flat: List[Any] = [p for g in groups for p in g]
    monitor = JobMonitor(flat, **agg_kwargs)
    if console is None:
        console = Console()
        if not console.is_terminal:          # piped / captured: do not squeeze the table into 80 columns
            console = Console(width=max(console.width, 200))
    if once:
        read_all(monitor)
        console.print(render(monitor.summary()))
        return 0
    from rich.live import Live
    monitor.poll()
    frames = 0
    with Live(render(monitor.summary()), console=console, refresh_per_second=4, screen=False) as live:
        try:
            while True:
                time.sleep(max(0.05, interval))
                monitor.poll()
                summary = monitor.summary()
                live.update(render(summary))
                frames += 1
                if exit_when_done and summary.state in ENDED:
                    break
                if max_frames is not None and frames >= max_frames:
                    break
        except KeyboardInterrupt:
            pass
    return 0
