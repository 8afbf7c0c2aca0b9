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
    ``REOPEN_CHECK_S`` seconds)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.error: Optional[str] = None
        self._fd = -1
        self._ino = None
        self._checked = time.monotonic()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open()
        except OSError as exc:
            raise CaptureError(f"cannot open {self.path}: {exc.strerror or exc}") from None

    def _open(self) -> None:
        # O_NONBLOCK: a FIFO put at the path must fail the open, not block it
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise OSError(f"{self.path} is not a regular file")
        self._fd, self._ino = fd, (st.st_dev, st.st_ino)

    def _still_there(self) -> bool:
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._ino

    def write(self, data: bytes) -> bool:
        if self.error is not None or self._fd < 0:
            return False
        now = time.monotonic()
        try:
            if now - self._checked >= REOPEN_CHECK_S:
                self._checked = now
                if not self._still_there():
                    os.close(self._fd)
                    self._fd = -1
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self._open()
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
                self._events = AppendFile(events_path)
            except CaptureError:
                self._log.close()
                raise
        self.listener = listener
        self.tail: Deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.created = time.monotonic()
        self.last_output = self.created
        self.last_event: Optional[float] = None      # monotonic time of the last event
        self.past_compile: Optional[float] = None    # monotonic time of the first compiled/step event
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
        if kind == "error":
            self.tail.append(saved_line(f"error event: {ev.get('message')} ({ev.get('where')})"))

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
