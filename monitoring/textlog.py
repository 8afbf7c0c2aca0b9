"""Parse the plain-text logs of MindSpore jobs not written by us (and our own human log lines).

Line forms understood (anything else is ignored; nothing here ever raises):

=========================================================  ==========================================
``epoch: 1 step: 1063, loss is 0.62``                      LossMonitor            -> kind ``step``
``Train epoch time: 215749.452 ms, per step time: 1307.572 ms``  TimeMonitor (2.x)  -> kind ``time``
``epoch time: 215749.452 ms, per step time: 1307.572 ms``  TimeMonitor (older)    -> kind ``time``
``Epoch: 49, val_loss: 0.31603706``                        seed's eval callback   -> kind ``val``
``=== epoch:   49, device id:  3, best miou: 0.6963, miou: 0.6825``  seed          -> kind ``miou``
``Eval result: mIoU/mAcc/allAcc 0.7380/0.8229/0.9293.``    seed's eval.py         -> kind ``eval``
``VOC2012-AUG-ss:mIoU/mAcc/allAcc 0.6929/0.8305/0.9232.``  seed's eval.py         -> kind ``eval``
``@pspnet {...}``                                          our event stream       -> kind ``event``
=========================================================  ==========================================

Which device a line belongs to
------------------------------
Only the ``===`` lines name their device.  A file from a per-device layout (msrun's
``worker_<N>.log``, the model zoo's ``LOG<N>/log.txt``, our ``logs/rank_<R>.log``) gives the device
for every line (see ``monitoring.sources``).  A single file written by several devices at once (the
seed README's "训练结果" block: four devices, lines interleaved) is demultiplexed with one documented
assumption: **the devices print each kind of line in turn, in device order** — in a run of
consecutive lines of the same kind that carry no device id, the k-th line belongs to the k-th device.
A run ends at the next recognised line of another kind; unrecognised lines do not end it.  Slot k is
device k when the ``===`` lines show ids below the number of slots (devices numbered 0..N-1); a
single-device log (runs of length 1) maps slot 0 to the one device id its ``===`` lines name.
"""
from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from cluster.contracts.events import MARKER, parse_line

_NUM = r"([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|NaN|inf|-inf|Infinity))"

_LOSS_RE = re.compile(r"epoch:\s*(\d+)\s*,?\s*step:\s*(\d+)\s*,?\s*loss is\s*\[?\s*" + _NUM)
_TIME_RE = re.compile(r"(?:Train\s+)?epoch time:\s*" + _NUM + r"\s*ms\s*,\s*per step time:\s*" + _NUM + r"\s*ms",
                      re.IGNORECASE)
_VAL_RE = re.compile(r"Epoch:\s*(\d+)\s*,\s*val_loss:\s*" + _NUM)
_MIOU_RE = re.compile(r"===\s*epoch:\s*(\d+)\s*,\s*device id:\s*(\d+)\s*,\s*best miou:\s*" + _NUM
                      + r"\s*,\s*miou:\s*" + _NUM)
_EVAL_RE = re.compile(r"(?:Eval result:|([^\s:]+):)\s*mIoU/mAcc/allAcc\s+" + _NUM + r"\s*/\s*" + _NUM
                      + r"\s*/\s*" + _NUM)


@dataclass
class TextRecord:
    """One recognised line.  ``device`` is set when the line itself names it."""
    kind: str                     # step | time | val | miou | eval | event
    fields: Dict[str, Any] = field(default_factory=dict)
    device: Optional[int] = None   # physical device id, when known
    rank: Optional[int] = None     # which rank (device slot) of the job the line belongs to
    line_no: int = 0


def _f(text: str) -> Optional[float]:
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return None if v != v or v in (float("inf"), float("-inf")) else v


def _ms_to_s(text: str) -> Optional[float]:
    """Milliseconds as written -> seconds, correctly rounded (1292.175 ms -> 1.292175, not 1.2921749999)."""
    try:
        v = float(Decimal(text) / 1000)
    except (InvalidOperation, ValueError, TypeError, ArithmeticError):
        return None
    return None if v != v or v in (float("inf"), float("-inf")) else v


def parse_text_line(line: Any) -> Optional[TextRecord]:
    """Recognise one log line (str or bytes); None for anything else.  Never raises."""
    try:
        if isinstance(line, (bytes, bytearray)):
            line = bytes(line).decode("utf-8", errors="replace")
        if not isinstance(line, str) or len(line) > 1_000_000:
            return None
        return _parse(line)
    except Exception:  # noqa: BLE001 - a reader must survive any input
        return None


def _parse(line: str) -> Optional[TextRecord]:
    stripped = line.strip()
    if not stripped:
        return None
    marker_at = stripped.find(MARKER.strip())
    if marker_at >= 0:
        ev = parse_line(stripped[marker_at:])
        if ev is not None:
            return TextRecord("event", {"event": ev})
    if "===" in stripped:
        m = _MIOU_RE.search(stripped)
        if m:
            return TextRecord("miou", {"epoch": int(m.group(1)), "best_miou": _f(m.group(3)),
                                       "miou": _f(m.group(4))}, device=int(m.group(2)))
    if "loss is" in stripped:
        m = _LOSS_RE.search(stripped)
        if m:
            return TextRecord("step", {"epoch": int(m.group(1)), "step": int(m.group(2)), "loss": _f(m.group(3))})
    if "per step time" in stripped:
        m = _TIME_RE.search(stripped)
        if m:
            return TextRecord("time", {"epoch_time_s": _ms_to_s(m.group(1)), "step_time_s": _ms_to_s(m.group(2))})
    if "val_loss" in stripped:
        m = _VAL_RE.search(stripped)
        if m:
            return TextRecord("val", {"epoch": int(m.group(1)), "val_loss": _f(m.group(2))})
    if "mIoU/mAcc/allAcc" in stripped:
        m = _EVAL_RE.search(stripped)
        if m:
            return TextRecord("eval", {"name": m.group(1) or "eval", "miou": _f(m.group(2)),
                                       "macc": _f(m.group(3)), "allacc": _f(m.group(4))})
    return None


class TextLogParser:
    """Stateful parser of one text log file: recognises lines and assigns each to a rank.

    ``rank``/``device`` (from the file's path) pin every line to that rank.  Without them, the
    interleaving assumption of the module docstring applies: a line without a device id gets the
    rank of its slot, a ``===`` line the rank of its device id.  ``feed`` returns the record with
    ``rank`` set (and ``device`` where known), or None for an unrecognised line.
    """

    def __init__(self, rank: Optional[int] = None, device: Optional[int] = None) -> None:
        self.rank = rank
        self.device = device
        self.line_no = 0
        self._run_kind: Optional[str] = None
        self._run_len = 0
        self.slots = 1                 # estimated number of devices writing this file
        self.device_ids: List[int] = []

    def feed(self, line: Any) -> Optional[TextRecord]:
        self.line_no += 1
        rec = parse_text_line(line)
        if rec is None:
            return None
        rec.line_no = self.line_no
        if rec.kind in ("event", "eval"):     # job-level or self-describing: not a device's turn
            return rec
        if self.rank is not None or self.device is not None:
            rec.rank = self.rank if self.rank is not None else self.device
            if rec.device is None:
                rec.device = self.device
            return rec
        slot = self._advance(rec.kind)
        if rec.device is None:
            rec.rank = slot
            return rec
        if rec.device not in self.device_ids:
            self.device_ids.append(rec.device)
            self.device_ids.sort()
        rec.rank = self.device_rank(rec.device)
        return rec

    def _advance(self, kind: str) -> int:
        if kind == self._run_kind:
            self._run_len += 1
        else:
            self._run_kind, self._run_len = kind, 1
        self.slots = max(self.slots, self._run_len)
        return self._run_len - 1

    def device_rank(self, device: int) -> int:
        """The rank (slot) of a device id named by a ``===`` line (see the module docstring)."""
        ids = self.device_ids
        if all(d < max(self.slots, len(ids)) for d in ids):
            return device                    # devices numbered 0..N-1: device k is slot k
        return ids.index(device) if device in ids else len(ids)   # e.g. a one-device log on device 3
