"""What the launcher prints while a job runs.

Three views (``launch`` flags): the default compact *progress* view (one line per rank: epoch/step,
loss, step time; redrawn in place on a terminal, plain throttled lines otherwise), ``--stream``
(every log line of every rank, prefixed ``[rank_R]``), and ``--quiet`` (launcher messages and the
final report only).  ``--ranks 0,1`` limits the per-rank output to those ranks.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import IO, Any, Dict, Iterable, Optional, Set

from monitoring.progress import Progress

PLAIN_EVERY_S = 2.0
REDRAW_EVERY_S = 0.5


def _fmt_progress(name: str, p: Progress) -> str:
    if p.last_event is None:
        return f"{name:>9}  starting"
    parts = [f"{name:>9}"]
    if p.steps_seen or p.epoch:
        parts.append(f"epoch {p.epoch} step {p.step}" + (f"/{p.steps_per_epoch}" if p.steps_per_epoch else ""))
    if p.loss is not None:
        parts.append(f"loss {p.loss:.4f}")
    if p.step_time_s is not None:
        parts.append(f"{p.step_time_s:.3f} s/step")
    if p.miou is not None:
        parts.append(f"mIoU {p.miou:.4f}")
    if p.last_event in ("finished", "error", "resumed"):
        parts.append(p.last_event)
    return "  ".join(parts)


class Console:
    def __init__(self, view: str = "progress", ranks: Optional[Iterable[int]] = None,
                 out: Optional[IO[str]] = None, tty: Optional[bool] = None) -> None:
        assert view in ("progress", "stream", "quiet"), view
        self.view = view
        self.ranks: Optional[Set[int]] = set(ranks) if ranks is not None else None
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.lock = threading.Lock()
        self.progress: Dict[str, Progress] = {}
        self._last_plain: Dict[str, float] = {}
        self._drawn = 0
        self._dirty = False
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # ------------------------------------------------------------ filters
    def _wanted(self, name: str) -> bool:
        if self.ranks is None:
            return True
        if not name.startswith("rank_"):
            return False
        try:
            return int(name[5:]) in self.ranks
        except ValueError:
            return False

    # ------------------------------------------------------------ launcher messages
    def info(self, text: str) -> None:
        with self.lock:
            self._erase()
            self.out.write(text.rstrip("\n") + "\n")
            self._draw()
            self.out.flush()

    # ------------------------------------------------------------ rank output (sink listener)
    def listener(self, name: str, text: str, event: Optional[Dict[str, Any]]) -> None:
        if not self._wanted(name) or self.view == "quiet":
            return
        if self.view == "stream":
            if event is None:
                with self.lock:
                    self.out.write(f"[{name}] {text}\n")
                    self.out.flush()
            return
        if event is None:
            return
        kind = event.get("event")
        with self.lock:
            p = self.progress.get(name)
            if p is None:
                p = self.progress[name] = Progress()
            p.apply(event)
            if kind not in ("step", "finished", "error", "resumed") and (kind != "epoch" or event.get("miou") is None):
                return                         # nothing the board shows changed
            if self.tty:
                self._dirty = True
                return
            now = time.monotonic()
            if kind != "step" or now - self._last_plain.get(name, 0.0) >= PLAIN_EVERY_S:
                self._last_plain[name] = now
                self.out.write(_fmt_progress(name, p) + "\n")
                self.out.flush()

    # ------------------------------------------------------------ in-place redraw (TTY)
    def start(self, names: Iterable[str]) -> None:
        for n in names:
            if self._wanted(n) and n.startswith("rank_"):
                self.progress.setdefault(n, Progress())
        if self.view == "progress" and self.tty:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="console", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(REDRAW_EVERY_S):
            with self.lock:
                if self._dirty:
                    self._erase()
                    self._draw()
                    self.out.flush()
                    self._dirty = False

    def _erase(self) -> None:
        if self._drawn and self.tty:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self) -> None:
        if self.view != "progress" or not self.tty or not self.progress or self._thread is None:
            return
        lines = [_fmt_progress(n, p) for n, p in sorted(self.progress.items(), key=lambda kv: _rank_key(kv[0]))]
        self.out.write("\n".join(lines) + "\n")
        self._drawn = len(lines)

    def finish(self) -> None:
        """Stop redrawing; leave the last board on screen."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)
            with self.lock:
                self._erase()
                self._draw_final()
            self._thread = None
        self.progress.clear()

    def _draw_final(self) -> None:
        if self.progress:
            lines = [_fmt_progress(n, p) for n, p in sorted(self.progress.items(), key=lambda kv: _rank_key(kv[0]))]
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()
        self._drawn = 0


def _rank_key(name: str) -> int:
    try:
        return int(name.split("_", 1)[1])
    except (IndexError, ValueError):
        return -1
