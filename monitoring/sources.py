"""Find and follow the inputs of a job: a job directory, a folder of logs, or single files.

``JobMonitor(paths)`` finds them (``discover``), reads what they gain (``monitoring.tailer``) and
feeds one ``monitoring.aggregate.Aggregator``; ``read_job_json`` reads job.json for it.

``discover(paths)`` returns a ``Found`` with the job name, job.json (if any) and a list of
``Source(path, kind, rank, device)``:

* **job directory** (has ``job.json`` or ``events/``): ``events/rank_<R>.jsonl`` as event sources;
  only when there are no event files, ``logs/rank_<R>.log`` as text sources (they hold the same
  events behind the ``@pspnet`` marker, so reading both would count everything twice).
* **folder of logs** (searched three levels deep): ``*.jsonl`` event files; msrun's
  ``worker_<N>.log`` (rank N); the model zoo's ``LOG<N>/log.txt`` (device N, rank N); our
  ``rank_<R>.log``; MindFormers' ``rank_<N>/info.log`` (rank N); any other ``*.log``/``*.txt``/``*.out``
  as a text log without a known rank.  ``scheduler.log`` is skipped.
* **a file**: ``.jsonl`` is an event file; anything else a text log, ranked by its name as above.

Text logs without a known rank are read first (their head, ``HEAD_BYTES``) to see what their
lines support (``monitoring.textlog.Layout``).  One that holds no per-device line (``eval.log``:
job-level results only) takes no rank.  When one such log holds per-device lines, its reading is
chosen from them: one device (it takes the first free rank) or several devices writing in turn
(demultiplexed, see ``monitoring.textlog``); ``devices`` (summary's ``--devices N``) forces the
reading.  When there are several, each is taken to be one device, ranked in name order after the
ranked ones.  ``Source.reading`` says which reading was used and why.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from cluster.contracts.jobdir import EVENTS, JOB_JSON, LOGS
from cluster.contracts.jobjson import JobJsonError, load_job_json
from monitoring.aggregate import Aggregator
from monitoring.state import JobSummary
from monitoring.tailer import Tailer
from monitoring.textlog import Layout, TextLogParser

_RANK_EVENTS = re.compile(r"^rank_(\d+)\.jsonl$")
_RANK_LOG = re.compile(r"^rank_(\d+)\.log$")
_WORKER_LOG = re.compile(r"^worker_(\d+)\.log$")
_LOG_DIR = re.compile(r"^LOG(\d+)$", re.IGNORECASE)
_MF_RANK_DIR = re.compile(r"^rank_(\d+)$")
HEAD_BYTES = 1 << 20       # how much of a lone log is read to choose its reading
TEXT_SUFFIXES = (".log", ".txt", ".out")
SKIP_NAMES = ("scheduler.log",)


@dataclass(frozen=True)
class Source:
    path: Path
    kind: str                        # "events" or "text"
    rank: Optional[int] = None
    device: Optional[int] = None
    devices: Optional[int] = None    # a file several devices write in turn: how many (None: not known)
    reading: str = ""                # how the file was read, when it had to be chosen


@dataclass
class Found:
    job: str = ""
    job_json: Optional[Path] = None
    job_dir: Optional[Path] = None
    sources: List[Source] = field(default_factory=list)
    missing: List[Path] = field(default_factory=list)


def is_job_dir(path: Path) -> bool:
    return path.is_dir() and ((path / JOB_JSON).is_file() or (path / EVENTS).is_dir())


def classify_file(path: Path) -> Source:
    """Kind, rank and device of one file, from its name and its parent folder's name."""
    name = path.name
    m = _RANK_EVENTS.match(name)
    if name.endswith(".jsonl"):
        return Source(path, "events", int(m.group(1)) if m else None)
    m = _WORKER_LOG.match(name)
    if m:
        return Source(path, "text", int(m.group(1)))
    m = _RANK_LOG.match(name)
    if m:
        return Source(path, "text", int(m.group(1)))
    m = _LOG_DIR.match(path.parent.name)
    if m and name == "log.txt":
        n = int(m.group(1))
        return Source(path, "text", n, n)
    m = _MF_RANK_DIR.match(path.parent.name)
    if m and name == "info.log":
        return Source(path, "text", int(m.group(1)))
    return Source(path, "text")


def _job_dir_sources(root: Path) -> List[Source]:
    events = sorted((root / EVENTS).glob("rank_*.jsonl"), key=_rank_key) if (root / EVENTS).is_dir() else []
    if events:
        return [classify_file(p) for p in events]
    logs = sorted((root / LOGS).glob("rank_*.log"), key=_rank_key) if (root / LOGS).is_dir() else []
    return [classify_file(p) for p in logs]


def _rank_key(p: Path) -> tuple:
    m = re.search(r"(\d+)", p.name)
    return (int(m.group(1)) if m else -1, p.name)


def _walk_folder(root: Path, depth: int = 3) -> List[Path]:
    out: List[Path] = []
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return out
    for e in entries:
        try:
            if e.is_dir(follow_symlinks=False):
                if depth > 0 and not e.name.startswith("."):
                    out.extend(_walk_folder(Path(e.path), depth - 1))
            elif e.is_file() and not e.name.startswith("."):
                if e.name.endswith(".jsonl") or (e.name.endswith(TEXT_SUFFIXES) and e.name not in SKIP_NAMES):
                    out.append(Path(e.path))
        except OSError:
            continue
    return out


def read_layout(path: Path, limit: int = HEAD_BYTES, enough: int = 200) -> Layout:
    """What the head of a text log supports (see ``monitoring.textlog.TextLogParser.layout``): its
    first ``limit`` bytes, or fewer once ``enough`` per-device lines were recognised (the reading is
    settled by then, and loose folders are looked at again on every poll)."""
    parser = TextLogParser()
    seen = 0
    rest = b""
    try:
        with open(path, "rb") as fh:
            while seen < limit:
                block = fh.read(min(_BLOCK, limit - seen))
                if not block:
                    break
                seen += len(block)
                lines = (rest + block).split(b"\n")
                rest = lines.pop()              # a partial last line waits for the next block
                for line in lines:
                    rec = parser.feed(line)
                    if rec is not None and rec.kind not in ("event", "eval"):
                        enough -= 1
                        if enough <= 0:
                            return parser.layout()
    except OSError:
        return Layout(None, "unreadable")
    if rest and seen < limit:                   # the file's last line, without a newline
        parser.feed(rest)
    return parser.layout()


_BLOCK = 64 << 10


def _rank_unranked(unique: List[Source], devices: Optional[int]) -> List[Source]:
    """Ranks (and readings) for the text logs whose names give none (see the module docstring)."""
    unranked = [s for s in unique if s.kind == "text" and s.rank is None]
    if not unranked:
        return unique
    # whether a log holds per-device lines shows at its first one; only a lone such log needs its reading
    layouts = {s.path: read_layout(s.path, enough=1 if len(unranked) > 1 else 200) for s in unranked}
    per_device = [s for s in unranked if layouts[s.path].devices is not None]
    if len(per_device) == 1 and len(unranked) > 1:
        layouts[per_device[0].path] = read_layout(per_device[0].path)
    taken = {s.rank for s in unique if s.rank is not None}
    new: dict = {}

    def free() -> int:
        r = 0
        while r in taken:
            r += 1
        taken.add(r)
        return r

    for s in unranked:
        if layouts[s.path].devices is None and not (devices and len(unranked) == 1):
            new[s.path] = Source(s.path, "text", reading=f"{s.path.name}: no per-device lines (takes no rank)")
    if len(per_device) == 1 or (devices and len(unranked) == 1):
        s = per_device[0] if per_device else unranked[0]
        lay = layouts[s.path]
        n = devices or lay.devices
        forced = " (--devices)" if devices else ""
        if n == 1:
            dev = lay.device_ids[0] if len(lay.device_ids) == 1 else None
            why = "one device" + forced if devices else lay.reason
            new[s.path] = Source(s.path, "text", free(), dev, 1, f"{s.path.name}: read as {why}")
        else:
            why = f"{n} devices writing in turn{forced}" if devices else lay.reason
            new[s.path] = Source(s.path, "text", None, None, n if devices else None,
                                 f"{s.path.name}: read as {why}")
    else:
        for s in per_device:
            new[s.path] = Source(s.path, "text", free(), reading=f"{s.path.name}: one device of several logs")
    return [new.get(s.path, s) for s in unique]


def discover(paths: Iterable[Any], devices: Optional[int] = None) -> Found:
    """Sources of the given paths (see the module docstring).  Missing paths are listed, not raised."""
    found = Found()
    files: List[Source] = []
    for raw in paths:
        p = Path(raw)
        if is_job_dir(p):
            found.job_dir = found.job_dir or p
            if (p / JOB_JSON).is_file() and found.job_json is None:
                found.job_json = p / JOB_JSON
            found.job = found.job or p.resolve().name
            files.extend(_job_dir_sources(p))
        elif p.is_dir():
            found.job = found.job or p.resolve().name
            files.extend(classify_file(f) for f in _walk_folder(p))
        elif p.is_file():
            found.job = found.job or p.stem
            files.append(classify_file(p))
        else:
            found.missing.append(p)
    seen = set()
    unique = []
    for s in files:
        key = s.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(s)
    unique = _rank_unranked(unique, devices)
    found.sources = unique
    return found


# ---------------------------------------------------------------- following a job's sources

_discover = discover

def read_job_json(path: Any) -> Dict[str, Any]:
    """job.json checked against its schema, or {} when it is missing or does not follow it: monitoring
    then shows what the events say (never raises)."""
    try:
        return dict(load_job_json(path))
    except JobJsonError:
        return {}


class JobMonitor:
    """Owner loop of one job's inputs: finds the sources, tails them, feeds one Aggregator.

    ``paths``: a job directory, a folder of logs, or files (see ``discover``).  ``poll()``
    reads only bytes added since the last call (a truncated or replaced file is re-read from its
    start) and returns the number of new lines; sources that appear later (a rank starting late)
    are picked up by the next poll.  job.json is read on every poll (a few KB).
    """

    def __init__(self, paths: Sequence[Any], job: Optional[str] = None, discover: Any = None,
                 **agg_kwargs: Any) -> None:
        self.paths = [Path(p) for p in paths]
        self._discover = discover or _discover      # e.g. summary's --devices reading
        self.aggregator = Aggregator(job=job or "", **agg_kwargs)
        self.tailer = Tailer()
        self.sources: Dict[Path, Any] = {}
        self._parsers: Dict[Path, Any] = {}
        self.job_json: Optional[Path] = None
        self.last_poll_bytes = 0      # bytes the last poll read (0: all sources consumed)
        self._listing: Any = None     # names in the job dirs when last discovered

    def _job_dir_listing(self) -> Any:
        """The names in each job dir, its events/ and logs/ (None: not only job dirs, discover each poll).

        Listing three folders is what tells whether a file came or went, exactly: for 1,024 ranks it
        costs a fraction of a full discover() (see docs/monitoring.md).
        """
        out = []
        for p in self.paths:
            try:
                names = os.listdir(p)
            except OSError:
                return None
            if JOB_JSON not in names and EVENTS not in names:
                return None
            for sub in (EVENTS, LOGS):
                try:
                    out.append(frozenset(os.listdir(p / sub)))
                except OSError:
                    out.append(None)
            out.append(frozenset(names))
        return out

    def refresh_sources(self) -> None:
        listing = self._job_dir_listing()
        if listing is not None and listing == self._listing:
            return
        self._listing = listing
        found = self._discover(self.paths)
        self.job_json = found.job_json
        if not self.aggregator.job and found.job:
            self.aggregator.job = found.job
        for src in found.sources:
            if src.path not in self.sources:
                self.sources[src.path] = src
                self.tailer.add(src.path)

    def poll(self) -> int:
        self.refresh_sources()
        if self.job_json is not None:
            self.aggregator.set_job_info(read_job_json(self.job_json))
        lines = 0
        chunks = self.tailer.poll()
        self.last_poll_bytes = self.tailer.last_bytes
        for chunk in chunks:
            src = self.sources.get(chunk.path)
            if src is None:
                continue
            if src.kind == "events":
                lines += self.aggregator.feed_lines(chunk.data)
                continue
            if chunk.reset:
                self._parsers.pop(chunk.path, None)
            parser = self._parsers.get(chunk.path)
            if parser is None:
                parser = self._parsers[chunk.path] = TextLogParser(rank=src.rank, device=src.device,
                                                                      devices=src.devices)
            touched = set()
            for line in chunk.data.split(b"\n"):
                if line:
                    lines += 1
                    rec = parser.feed(line)
                    if rec is not None:
                        self.aggregator.feed_text(rec)
                        if rec.rank is not None:
                            touched.add(rec.rank)
            for r in touched:
                self.aggregator.touch(r, chunk.mtime)
        return lines

    def summary(self, now: Optional[float] = None) -> JobSummary:
        return self.aggregator.snapshot(now)
