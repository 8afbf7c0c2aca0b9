"""Monitoring sub-commands of `pspnet-cluster`: summary, top, report (and metrics, added separately).

Each command has its own ``add_<name>(subparsers)`` and ``cmd_<name>(args)``; ``add_commands`` calls
them all.  Handlers import their modules when they run, so `pspnet-cluster --help` stays fast.
"""
from __future__ import annotations

import argparse
import sys

from cluster.contracts.exitcodes import ExitCode


def add_commands(subparsers: "argparse._SubParsersAction") -> None:
    add_summary(subparsers)
    add_top(subparsers)
    add_report(subparsers)
    add_metrics(subparsers)


def _agg_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--window", type=_int_in(1, 1_000_000, "steps"), default=100, metavar="N",
                   help="steps in the sliding window of the step-time percentiles (default 100)")
    p.add_argument("--straggler-margin", type=_float_in(0.0, 100.0, "a fraction"), default=0.2, metavar="F",
                   help="flag a device whose p50 step time exceeds the median of the others by more than F "
                        "(default 0.2 = 20%%)")
    p.add_argument("--stale-after", type=_float_in(0.0, 30 * 86400.0, "seconds"), default=300.0, metavar="S",
                   help="a running rank without an event for S seconds is flagged stalled (default 300)")


def _int_in(lo: int, hi: int, what: str):
    """An argparse type: a whole number lo..hi (a bad one is a usage error, exit 2)."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = None
        if n is None or not lo <= n <= hi:
            raise argparse.ArgumentTypeError(f"{text!r}: give {what}, a whole number from {lo} to {hi}")
        return n
    return parse


def _float_in(lo: float, hi: float, what: str):
    """An argparse type: a finite number lo..hi (NaN and inf are refused: they would turn checks off)."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            v = float("nan")
        if not lo <= v <= hi:     # false for NaN too
            raise argparse.ArgumentTypeError(f"{text!r}: give {what}, a number from {lo:g} to {hi:g}")
        return v
    return parse


def _agg_kwargs(args: argparse.Namespace) -> dict:
    return {"window": args.window, "straggler_margin": args.straggler_margin, "stale_after_s": args.stale_after}


# ---------------------------------------------------------------- summary
def add_summary(subparsers: "argparse._SubParsersAction") -> None:
    p = subparsers.add_parser(
        "summary", help="per-device table of a job dir, a folder of logs, or log/event files",
        epilog="examples:\n  pspnet-cluster summary runs/<job>\n  pspnet-cluster summary logs/   "
               "# msrun worker_<N>.log, LOG<N>/log.txt, MindFormers rank_<N>/info.log\n"
               "  pspnet-cluster summary train.log --devices 1   # one device's LossMonitor lines\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Summarise a job: per device steps, step time p50/p95/max (window and whole run), "
                    "images/s, loss, val loss, mIoU, best mIoU, state, straggler flags. PATH is a job dir "
                    "(runs/<job>), a folder of logs (msrun worker_<N>.log, model zoo LOG<N>/log.txt, MindFormers "
                    "rank_<N>/info.log), or files "
                    "(events .jsonl or text logs). Each job dir is its own job; other paths form one job.")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--json", action="store_true", help="print JSON ({\"jobs\": [...]}) instead of a table")
    p.add_argument("--devices", type=_positive_int, metavar="N",
                   help="a lone log without per-device names holds N devices' lines (1: one device; N>1: N "
                        "devices printing in turn); without it the step numbers and device ids decide, and "
                        "the summary says which reading was used")
    _agg_options(p)
    p.set_defaults(func=cmd_summary)


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of devices, 1 or more")
    return n


def cmd_summary(args: argparse.Namespace) -> int:
    from monitoring.summary import print_summaries, read_jobs
    try:
        jobs = read_jobs(args.paths, devices=args.devices, **_agg_kwargs(args))
    except FileNotFoundError as exc:
        print(f"pspnet-cluster summary: {exc}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    bad = [why for why in (j.unrecognised() for j in jobs) if why]
    for why in bad:
        print(f"pspnet-cluster summary: {why}", file=sys.stderr)
    if bad and len(bad) == len(jobs):
        return ExitCode.BAD_INPUT
    print_summaries(jobs, as_json=args.json)
    return 2 if bad else 0


# ---------------------------------------------------------------- top
def add_top(subparsers: "argparse._SubParsersAction") -> None:
    p = subparsers.add_parser(
        "top", help="live per-device terminal dashboard of a job",
        description="One row per device: epoch progress, step time with a sparkline, images/s, loss, mIoU, "
                    "state; stragglers, stalled and dead ranks highlighted. Follows the job's files "
                    "incrementally; works on a running and on a finished job. Ctrl-C quits.")
    p.add_argument("job_dir", metavar="JOB_DIR", nargs="+",
                   help="a job dir (or a folder of logs, or files)")
    p.add_argument("--once", action="store_true", help="print one frame and exit (for scripts and tests)")
    p.add_argument("--interval", type=_float_in(0.05, 3600.0, "seconds"), default=1.0, metavar="S", help="refresh period (default 1 s)")
    p.add_argument("--exit-when-done", action="store_true",
                   help="exit once the job has ended (job.json state succeeded/failed/stopped)")
    _agg_options(p)
    p.set_defaults(func=cmd_top)


def cmd_top(args: argparse.Namespace) -> int:
    from monitoring.top import run_top
    try:
        return run_top(args.job_dir, interval=args.interval, once=args.once,
                       exit_when_done=args.exit_when_done, **_agg_kwargs(args))
    except FileNotFoundError as exc:
        print(f"pspnet-cluster top: {exc}", file=sys.stderr)
        return ExitCode.BAD_INPUT


# ---------------------------------------------------------------- report
def add_report(subparsers: "argparse._SubParsersAction") -> None:
    p = subparsers.add_parser(
        "report", help="write JOB_DIR/report/summary.md with the per-device table and PNG plots",
        description="End-of-job report: report/summary.md (table, restarts, stragglers) and PNG plots of step "
                    "time per device, loss, and mIoU per epoch (matplotlib). The orchestrator writes it at the "
                    "end of a job; this command (re)writes it.")
    p.add_argument("job_dir", metavar="JOB_DIR")
    p.add_argument("-o", "--out", metavar="DIR", default=None, help="output folder (default JOB_DIR/report)")
    _agg_options(p)
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path
    from cluster.contracts.jobdir import JOB_JSON
    from monitoring.report import write_report
    # only a job dir: a report folder is written into it, so any other directory must be refused
    if not (Path(args.job_dir) / JOB_JSON).is_file():
        what = "a file" if Path(args.job_dir).is_file() else "not a job dir" if Path(args.job_dir).is_dir() \
            else "does not exist"
        print(f"pspnet-cluster report: {args.job_dir}: {what} (no {JOB_JSON}); give a job dir, e.g. runs/<job-id>",
              file=sys.stderr)
        return 2
    try:
        path = write_report(args.job_dir, out_dir=args.out, **_agg_kwargs(args))
    except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        print(f"pspnet-cluster report: {exc}", file=sys.stderr)
        return ExitCode.BAD_INPUT
    print(path)
    return 0


# ---------------------------------------------------------------- metrics
DEFAULT_METRICS_PORT = 9401


def add_metrics(subparsers: "argparse._SubParsersAction") -> None:
    p = subparsers.add_parser(
        "metrics", help="serve Prometheus /metrics and the web dashboard for job dirs or log files",
        description="Standalone exporter for jobs launched by other tools (launch starts one itself with "
                    "--metrics-port): /metrics (Prometheus text format), / (web dashboard: step time per device, "
                    "loss, mIoU, states) and /api/state (JSON). A background thread reads what the files gained every "
                    "--poll seconds; a scrape shows that state (pspnet_last_event_age_seconds says how old). "
                    "PATH is a job dir, a folder of logs or files; each job dir is its own job, other paths "
                    "form one job. Ctrl-C stops it.")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--port", type=_int_in(0, 65535, "a TCP port"), default=DEFAULT_METRICS_PORT, metavar="P",
                   help=f"TCP port (default {DEFAULT_METRICS_PORT}; 0 picks a free one and prints it)")
    p.add_argument("--host", default="127.0.0.1", metavar="H",
                   help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 for all interfaces)")
    p.add_argument("--no-npu", action="store_true", help="do not export npu-smi figures even where npu-smi exists")
    p.add_argument("--poll", type=_poll_seconds, default=1.0, metavar="S",
                   help="seconds between two reads of the files (default 1; a scrape is at most this old)")
    _agg_options(p)
    # the top-level command hands in this host's accelerator health reader (health_reader)
    p.set_defaults(func=cmd_metrics, wants_health_reader=True, health_reader=None)


def _poll_seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0.05 <= v <= 3600:          # NaN fails too
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds between 0.05 and 3600, e.g. --poll 1")
    return v


def cmd_metrics(args: argparse.Namespace) -> int:
    from pathlib import Path

    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"pspnet-cluster metrics: no such file or directory: {missing[0]} "
              "(give a job dir such as runs/<job>, a folder of logs, or log/event files)", file=sys.stderr)
        return ExitCode.BAD_INPUT
    from monitoring.exporter import serve
    try:
        server = serve(args.paths, host=args.host, port=args.port, start=False, local_processes=True,
                       npu_reader=None if args.no_npu else args.health_reader, poll_interval_s=args.poll,
                       **_agg_kwargs(args))
    except OSError as exc:
        print(f"pspnet-cluster metrics: cannot listen on {args.host}:{args.port}: {exc.strerror or exc} "
              "(choose another --port, or 0 for a free one)", file=sys.stderr)
        return ExitCode.BAD_INPUT
    print(f"serving {server.url}/metrics  (dashboard {server.url}/ , JSON {server.url}/api/state); Ctrl-C stops",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0
