"""Output capture: one ``RankSink`` per process splits its output into the job dir's files.

Every line goes to ``logs/<name>.log``; event lines (``@pspnet {...}``) also go, marker removed, to
``events/<name>.jsonl`` (ranks only).  The sink remembers what the supervisor needs (when the last
event came, whether the rank got past graph compilation, its last lines) and what the console shows
(epoch/step, loss, step time), and forwards each line to an optional listener (the console).
Files are appended to, so a restarted attempt continues the same files (events carry ``attempt``).
"""
from __future__ import annotations

import collections
import threading
import time
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional

from cluster.contracts.events import parse_line, split_stream_line

TAIL_LINES = 200

#: listener(name, text, event_or_None)
Listener = Callable[[str, str, Optional[Dict[str, Any]]], None]


def readable_tail(lines: List[str], n: int = 20) -> List[str]:
    """The last ``n`` lines, without MindSpore's own [INFO]/[WARNING] log lines when others exist."""
    plain = [l for l in lines if not l.startswith(("[INFO]", "[WARNING]"))]
    return (plain or list(lines))[-n:]


class RankSink:
    """Receives one process's output lines (see orchestrator/workers.py LineSink)."""

    def __init__(self, name: str, log_path: Path, events_path: Optional[Path] = None,
                 listener: Optional[Listener] = None, header: Optional[str] = None) -> None:
        self.name = name
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "a", buffering=1, encoding="utf-8", errors="replace")
        self._events = None
        if events_path is not None:
            events_path.parent.mkdir(parents=True, exist_ok=True)
            self._events = open(events_path, "a", buffering=1, encoding="utf-8")
        self.listener = listener
        self.tail: Deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.created = time.monotonic()
        self.last_output = self.created
        self.last_event: Optional[float] = None      # monotonic time of the last event
        self.past_compile: Optional[float] = None    # monotonic time of the first compiled/step event
        self.progress: Dict[str, Any] = {}           # latest step/epoch fields, for the console
        self.closed = threading.Event()
        self._lock = threading.Lock()
        if header:
            self._log.write(header + "\n")

    # ------------------------------------------------------------ LineSink
    def line(self, text: str) -> None:
        now = time.monotonic()
        event = None
        payload = split_stream_line(text)
        if payload is not None:
            event = parse_line(payload)
        with self._lock:
            self.last_output = now
            if self._log is not None:
                self._log.write(text + "\n")
            if event is not None:
                if self._events is not None:
                    self._events.write(payload + "\n")
                self._note(event, now)
            else:
                self.tail.append(text)
        if self.listener is not None:
            self.listener(self.name, text, event)

    def close(self) -> None:
        with self._lock:
            for fh in (self._log, self._events):
                if fh is not None:
                    try:
                        fh.close()
                    except OSError:
                        pass
            self._log = self._events = None
        self.closed.set()

    # ------------------------------------------------------------ bookkeeping
    def _note(self, ev: Dict[str, Any], now: float) -> None:
        self.last_event = now
        kind = ev.get("event")
        if kind in ("compiled", "step") and self.past_compile is None:
            self.past_compile = now
        if kind == "step":
            for k in ("epoch", "step", "steps_per_epoch", "global_step", "loss", "step_time_s", "images_per_s"):
                if k in ev:
                    self.progress[k] = ev[k]
        elif kind == "epoch":
            for k in ("miou", "val_loss", "best_miou"):
                if ev.get(k) is not None:
                    self.progress[k] = ev[k]
        elif kind in ("finished", "error", "resumed", "start", "checkpoint"):
            self.progress["last"] = kind
            if kind == "error":
                self.tail.append(f"error event: {ev.get('message')} ({ev.get('where')})")

    def last_lines(self, n: int = TAIL_LINES) -> List[str]:
        """The last ``n`` non-event lines (the event files hold the rest)."""
        with self._lock:
            return list(self.tail)[-n:]

    def quiet_for(self, now: Optional[float] = None) -> float:
        """Seconds since the last event (since creation when none came yet)."""
        now = time.monotonic() if now is None else now
        return now - (self.last_event if self.last_event is not None else self.created)
