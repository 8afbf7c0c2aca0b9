"""Output capture: one ``RankSink`` per process splits its output into the job dir's files.

Every line goes to ``logs/<name>.log``; event lines (``@pspnet {...}``) also go, marker removed, to
``events/<name>.jsonl`` (ranks only).  The sink remembers what the supervisor needs (when the last
event came, whether the rank got past graph compilation, its last lines) and forwards each line to an
optional listener (the console, and the exporter's in-memory feed).
Files are appended to, so a restarted attempt continues the same files (events carry ``attempt``).

Faults: the event is noted (the heartbeat the hang check reads) before anything is written, so a
failing write never makes a healthy rank look hung.  A write that fails (disk full, permissions, a
path replaced by a directory) is not raised into the reader thread: the sink records it in ``fault``
and the supervisor fails the attempt with that message.  A file deleted or replaced while the job
runs is re-created at its path, so the rank stays visible to status, summary and the exporter.
Memory is bounded: the sink keeps ``TAIL_LINES`` lines of at most ``SAVED_LINE_CHARS`` characters.
"""
from __future__ import annotations

import collections
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional

from cluster.contracts.events import parse_line, split_stream_line

TAIL_LINES = 200
#: step intervals kept for the adaptive hang check
STEP_WINDOW = 50
#: intervals needed before step times count as steady
STEADY_STEPS = 10
#: longest saved line (the failure block and job.json hold saved lines; the log holds them whole)
SAVED_LINE_CHARS = 2000
#: how often a sink checks that its files are still at their paths
REOPEN_CHECK_S = 0.5

#: listener(name, text, event_or_None)
Listener = Callable[[str, str, Optional[Dict[str, Any]]], None]


def readable_tail(lines: List[str], n: int = 20) -> List[str]:
    """The last ``n`` lines, without MindSpore's own [INFO]/[WARNING] log lines when others exist."""
    plain = [l for l in lines if not l.startswith(("[INFO]", "[WARNING]"))]
    return (plain or list(lines))[-n:]


def saved_line(text: str) -> str:
    if len(text) <= SAVED_LINE_CHARS:
        return text
    return text[:SAVED_LINE_CHARS] + f" [... {len(text) - SAVED_LINE_CHARS} more characters in the log]"


class CaptureError(OSError):
    """A rank's log or events file cannot be opened (the message names the file and the cause)."""


class AppendFile:
    """One append-only output file: writes never raise (the first failure is kept in ``error``), and
    a file deleted or replaced under it is re-created at its path (checked at most every
    ``REOPEN_CHECK_S`` seconds).

    With ``restore`` a deleted file comes back whole: the sink still holds the deleted file open,
    so everything written before and since the deletion is copied into the new one (event files:
    small, and every reader depends on them; logs are not copied, they can be large).
    """

    def __init__(self, path: Path, restore: bool = False) -> None:
        self.path = Path(path)
        self.restore = restore
        self.error: Optional[str] = None
        self._fd = -1
        self._ino = None
        self._checked = time.monotonic()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd, self._ino = self._open()
        except OSError as exc:
            raise CaptureError(f"cannot open {self.path}: {exc.strerror or exc}") from None

    def _open(self):
        # O_NONBLOCK: a FIFO put at the path must fail the open, not block it
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise OSError(f"{self.path} is not a regular file")
        return fd, (st.st_dev, st.st_ino)

    def _reopen_if_gone(self) -> None:
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._ino:
                return
            deleted = False
        except FileNotFoundError:
            deleted = True
        except OSError:
            return
        old = self._fd
        self._fd = -1
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd, self._ino = self._open()
            if deleted and self.restore:
                offset = 0
                while True:
                    block = os.pread(old, 1 << 20, offset)
                    if not block:
                        break
                    view = memoryview(block)
                    while view:
                        view = view[os.write(self._fd, view):]
                    offset += len(block)
        finally:
            os.close(old)

    def write(self, data: bytes) -> bool:
        if self.error is not None or self._fd < 0:
            return False
        now = time.monotonic()
        try:
            if now - self._checked >= REOPEN_CHECK_S:
                self._checked = now
                self._reopen_if_gone()
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            return True
        except OSError as exc:
            self.error = f"cannot write {self.path}: {exc.strerror or exc}"
            return False

    def close(self) -> None:
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1


class RankSink:
    """Receives one process's output lines (see orchestrator/workers.py LineSink).

    Raises ``CaptureError`` when its files cannot be opened.
    """

    def __init__(self, name: str, log_path: Path, events_path: Optional[Path] = None,
                 listener: Optional[Listener] = None, header: Optional[str] = None) -> None:
        self.name = name
        self._log: Optional[AppendFile] = AppendFile(log_path)
        self._events: Optional[AppendFile] = None
        self._fault: Optional[str] = None
        if events_path is not None:
            try:
                self._events = AppendFile(events_path, restore=True)
            except CaptureError:
                self._log.close()
                raise
        self.listener = listener
        self.tail: Deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.created = time.monotonic()
        self.last_output = self.created
        self.last_event: Optional[float] = None      # monotonic time of the last event
        self.past_compile: Optional[float] = None    # monotonic time of the first compiled/step event
        # for the adaptive hang check: seconds between consecutive step events of plain training
        self.step_intervals: Deque[float] = collections.deque(maxlen=STEP_WINDOW)
        self.last_step_at: Optional[float] = None    # monotonic time of the last step event
        self.last_seen = "no event yet"              # where the rank was last seen, for the failure block
        self.phase: Optional[str] = None             # validation / checkpoint announced, or epoch ended
        self.ckpt_seconds = 0.0                      # longest checkpoint save seen
        self.ckpt_steps: set = set()                 # global steps after which a checkpoint was saved
        self.last_global_step: Optional[int] = None
        self.closed = threading.Event()
        self._lock = threading.Lock()
        if header:
            self._log.write((header + "\n").encode())

    # ------------------------------------------------------------ LineSink
    def line(self, text: str) -> None:
        now = time.monotonic()
        event = None
        payload = split_stream_line(text)
        if payload is not None:
            event = parse_line(payload)
        with self._lock:
            self.last_output = now
            if event is not None:
                self._note(event, now)       # the heartbeat first: nothing below may lose it
            else:
                self.tail.append(saved_line(text))
            if self._log is not None:
                self._log.write((text + "\n").encode("utf-8", errors="replace"))
            if event is not None and self._events is not None:
                self._events.write((payload + "\n").encode("utf-8", errors="replace"))
        if self.listener is not None:
            self.listener(self.name, text, event)

    def close(self) -> None:
        with self._lock:
            self.fault   # noqa: B018 - keep the first write failure once the files are gone
            for fh in (self._log, self._events):
                if fh is not None:
                    fh.close()
            self._log = self._events = None
        self.closed.set()

    # ------------------------------------------------------------ bookkeeping
    def _note(self, ev: Dict[str, Any], now: float) -> None:
        self.last_event = now
        kind = ev.get("event")
        if kind in ("compiled", "step") and self.past_compile is None:
            self.past_compile = now
        self._note_phase(kind, ev, now)
        if kind == "error":
            self.tail.append(saved_line(f"error event: {ev.get('message')} ({ev.get('where')})"))

    def _note_phase(self, kind: Any, ev: Dict[str, Any], now: float) -> None:
        if kind == "step":
            # an interval that spans validation, a checkpoint or a restart is not a step time
            if self.last_step_at is not None and self.phase is None:
                self.step_intervals.append(now - self.last_step_at)
            self.last_step_at = now
            gs = ev.get("global_step")
            self.last_global_step = gs if isinstance(gs, int) else None
            spe, step = ev.get("steps_per_epoch"), ev.get("step")
            self.phase = "epoch end" if spe is not None and step == spe else None
            self.last_seen = f"step {ev.get('global_step')} (epoch {ev.get('epoch')} step {step}/{spe})"
        elif kind == "phase":
            self.phase = str(ev.get("phase") or "phase")
            self.last_seen = f"{self.phase} after step {self.last_global_step}"
        elif kind == "checkpoint":
            try:
                self.ckpt_seconds = max(self.ckpt_seconds, float(ev.get("seconds") or 0.0))
                self.ckpt_steps.add(int(ev.get("global_step")))
            except (TypeError, ValueError, OverflowError):
                pass
            self.phase = "checkpoint"     # the next interval holds the save: not a step time
            self.last_seen = f"checkpoint of step {ev.get('global_step')}"
        elif kind in ("start", "compiled", "resumed"):
            self.step_intervals.clear()
            self.last_step_at = None
            self.phase = None
            self.last_seen = f"{kind} event"
        elif isinstance(kind, str):
            self.last_seen = f"{kind} event"

    def step_p95(self) -> Optional[float]:
        """The 95th percentile of recent step intervals, once there are enough to call them steady."""
        with self._lock:
            xs = sorted(self.step_intervals)
        if len(xs) < STEADY_STEPS:
            return None
        return xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]

    def hang_limit(self, k: float, floor: float) -> Optional[float]:
        """Seconds without a step event after which this rank is hung, from its own step times; None when
        that cannot be said (step times not steady yet, or validation / a checkpoint / an epoch end
        under way: then only the fixed --hang-timeout applies)."""
        p95 = self.step_p95()
        if p95 is None or self.phase is not None or self.last_step_at is None:
            return None
        limit = max(floor, k * p95)
        gs = self.last_global_step
        if self.ckpt_steps and isinstance(gs, int) and any(gs % s == 0 for s in _cadences(self.ckpt_steps)):
            limit += 3 * self.ckpt_seconds + floor   # a checkpoint is due after this step: allow for it
        return limit

    @property
    def fault(self) -> Optional[str]:
        """The first write failure of its files, or None."""
        if self._fault is None:
            for fh in (self._log, self._events):
                if fh is not None and fh.error:
                    self._fault = fh.error
                    break
        return self._fault

    def last_lines(self, n: int = TAIL_LINES) -> List[str]:
        """The last ``n`` non-event lines (the event files hold the rest)."""
        with self._lock:
            return list(self.tail)[-n:]


def _cadences(steps: set) -> List[int]:
    """Checkpoint cadences that explain the global steps seen (every K steps)."""
    import math
    ordered = sorted(s for s in steps if s > 0)
    if not ordered:
        return []
    k = 0
    for s in ordered:
        k = math.gcd(k, s)
    return [k] if k else []
