"""Per-rank progress: the one fold of the event stream that every view reads.

The launcher's console, `status`, and the aggregator behind `top`, `summary`, the report and the
exporter all turn events into a ``Progress`` with ``Progress.fold``; none reads events another way.

``fold(events)`` applies events of one rank (dicts as ``cluster.contracts.events.parse_line`` gives
them, oldest first) and returns the step events among them, for the statistics the aggregator keeps.
A run of consecutive step events is applied at once: its fields are those of the newest step that
carries a usable value (bad values are skipped, never raised on), so folding a file in one batch or
line by line gives the same progress.

States: ``start`` -> starting, ``compiled``/``step``/``epoch``/``checkpoint``/``resumed`` -> running,
``finished`` -> finished, ``error`` -> failed; an event of a later attempt resets the state and the
error (best mIoU and the mIoU history are kept).
"""
from __future__ import annotations

import math
import operator
from itertools import compress, repeat
from typing import Any, Dict, List, Optional, Sequence

_STEP_INTS = ("epoch", "step", "global_step")
_STEP_FLOATS = ("loss", "lr", "images_per_s", "step_time_s")
_EPOCH_FLOATS = ("val_loss", "miou", "macc", "allacc")


def num(value: Any) -> Optional[float]:
    """A finite float from a number (JSON's, or numpy's), else None (bools and strings are not numbers)."""
    if type(value) is float:
        return value if -math.inf < value < math.inf else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if -math.inf < value < math.inf else None


def integer(value: Any, default: Optional[int] = None) -> Optional[int]:
    """An int from a number or a string of digits, else ``default``."""
    if type(value) is int:
        return value
    if isinstance(value, float):
        return int(value) if -math.inf < value < math.inf else default
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return default
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    return default


def _newest(run: Sequence[Dict[str, Any]], key: str, conv: Any) -> Any:
    """The newest usable value of ``key`` in ``run`` (None when no event carries one)."""
    for ev in reversed(run):
        v = conv(ev.get(key))
        if v is not None:
            return v
    return None


class Progress:
    """What is known of one rank, as its events told it."""

    def __init__(self, rank: int = 0, job: str = "") -> None:
        self.rank, self.job, self.host = rank, job, ""
        self.device: Optional[int] = None
        self.attempt, self.world_size, self.state, self.pid = 0, None, "unknown", None
        self.epoch, self.epochs, self.step, self.steps_per_epoch, self.global_step = 0, None, 0, None, 0
        self.steps_seen = 0
        self.loss = self.lr = self.step_time_s = self.images_per_s = self.compile_s = None
        self.val_loss = self.miou = self.macc = self.allacc = self.best_miou = None
        self.epoch_time_s = self.mean_step_time_s = self.last_event_ts = None
        self.last_event: Optional[str] = None
        self.error: Optional[str] = None
        self.miou_history: List[tuple] = []          # (epoch, mIoU) per validated epoch
        self.val_loss_history: List[tuple] = []      # (epoch, val loss) per validated epoch

    def apply(self, ev: Dict[str, Any]) -> None:
        self.fold([ev])

    def fold(self, events: Sequence[Dict[str, Any]], names: Optional[List[Any]] = None) -> Sequence[Dict[str, Any]]:
        """Apply ``events`` (oldest first); returns the step events among them, in order."""
        if names is None:
            names = [ev.get("event") for ev in events]
        others = list(compress(range(len(names)), map(operator.ne, names, repeat("step"))))
        if not others:          # the usual batch: steps only
            if events:
                self._steps(events)
            return events
        steps: List[Dict[str, Any]] = []
        start = 0
        for i in others:        # runs of steps between the other events, each run applied at once
            if i > start:
                steps += events[start:i]
                self._steps(events[start:i])
            self._event(names[i], events[i])
            start = i + 1
        if start < len(events):
            steps += events[start:]
            self._steps(events[start:])
        return steps

    def _common(self, first: Dict[str, Any], last: Sequence[Dict[str, Any]]) -> None:
        """Fields every event carries; ``last`` is the run (newest last), ``first`` its oldest event."""
        ts = _newest(last[-1:], "ts", num)
        if ts is not None and (self.last_event_ts is None or ts >= self.last_event_ts):
            self.last_event_ts = ts
        attempt = max(integer(first.get("attempt"), 0) or 0, integer(last[-1].get("attempt"), 0) or 0)
        if attempt > self.attempt:
            self.attempt = attempt
            self.error = None
            if self.state in ("failed", "finished", "stopped"):
                self.state = "starting"
        ws = _newest(last, "world_size", integer)
        if ws is not None and ws > 0:
            self.world_size = ws
        dev = _newest(last, "device", integer)
        if dev is not None:
            self.device = dev
        host = last[-1].get("host")
        if isinstance(host, str) and host:
            self.host = host
        job = last[-1].get("job")
        if isinstance(job, str) and job and not self.job:
            self.job = job

    def _steps(self, run: Sequence[Dict[str, Any]]) -> None:
        self._common(run[0], run)
        self.last_event = "step"
        if self.state != "finished":
            self.state = "running"
        self.steps_seen += len(run)
        for key in _STEP_INTS:
            v = _newest(run, key, integer)
            if v is not None:
                setattr(self, key, v)
        spe = _newest(run, "steps_per_epoch", integer)
        if spe:
            self.steps_per_epoch = spe
        for key in _STEP_FLOATS:
            v = _newest(run, key, num)
            if v is not None:
                setattr(self, key, v)

    def _event(self, name: Any, ev: Dict[str, Any]) -> None:
        self._common(ev, (ev,))
        self.last_event = name if isinstance(name, str) else None
        if name == "start":                  # a (re)started process: its earlier error is history
            self.error = None
            self.state = "starting"
            self.pid = integer(ev.get("pid"), self.pid)
        elif name == "compiled":
            self.compile_s = num(ev.get("seconds"))
            self.state = "running"
        elif name == "epoch":
            self.state = "running"
            epoch = integer(ev.get("epoch"))
            if epoch is not None:
                self.epoch = epoch
            self.epoch_time_s = num(ev.get("epoch_time_s")) or self.epoch_time_s
            mst = num(ev.get("mean_step_time_s"))
            if mst is not None:
                self.mean_step_time_s = mst
            for key in _EPOCH_FLOATS:
                v = num(ev.get(key))
                if v is not None:
                    setattr(self, key, v)
            self.note_miou(epoch, num(ev.get("miou")), num(ev.get("best_miou")))
            if num(ev.get("val_loss")) is not None:
                self.val_loss_history.append((epoch, num(ev.get("val_loss"))))
        elif name in ("checkpoint", "resumed"):
            if self.state in ("unknown", "starting"):
                self.state = "running"
            gs = integer(ev.get("global_step"))
            if name == "resumed" and gs is not None:
                self.global_step = gs
                self.epoch = integer(ev.get("epoch"), self.epoch) or self.epoch
        elif name == "finished":
            self.state = "finished"
            self.epochs = integer(ev.get("epochs"), self.epochs)
            b = num(ev.get("best_miou"))
            if b is not None:
                self.best_miou = b if self.best_miou is None else max(self.best_miou, b)
        elif name == "error":
            self.state = "failed"
            msg = ev.get("message")
            self.error = str(msg)[:500] if msg is not None else "error"

    def note_miou(self, epoch: Optional[int], miou: Optional[float], best: Optional[float]) -> None:
        if miou is not None:
            self.miou = miou
            self.miou_history.append((epoch, miou))
        cands = [v for v in (self.best_miou, best, miou) if v is not None]
        if cands:
            self.best_miou = max(cands)
