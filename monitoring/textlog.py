"""Parse the plain-text logs of MindSpore jobs not written by us (and our own human log lines).

Line forms understood (anything else is ignored; nothing here ever raises):

=========================================================  ==========================================
``epoch: 1 step: 1063, loss is 0.62``                      LossMonitor            -> kind ``step``
``{ Epoch:[  1/  2], step:[    1/   19], loss: 11.2, per_step_time: 103328ms, ...``  MindFormers -> ``step``
``{ step:[  100/ 1000], loss:   2.345678, per_step_time:    850ms, ...``  MindFormers (step only) -> ``step``
``Train epoch time: 215749.452 ms, per step time: 1307.572 ms``  TimeMonitor (2.x)  -> kind ``time``
``epoch time: 215749.452 ms, per step time: 1307.572 ms``  TimeMonitor (older)    -> kind ``time``
``Epoch: 49, val_loss: 0.31603706``                        seed's eval callback   -> kind ``val``
``=== epoch:   49, device id:  3, best miou: 0.6963, miou: 0.6825``  seed          -> kind ``miou``
``Eval result: mIoU/mAcc/allAcc 0.7380/0.8229/0.9293.``    seed's eval.py         -> kind ``eval``
``VOC2012-AUG-ss:mIoU/mAcc/allAcc 0.6929/0.8305/0.9232.``  seed's eval.py         -> kind ``eval``
``@pspnet {...}``                                          our event stream       -> kind ``event``
=========================================================  ==========================================

LossMonitor counts ``step`` within the epoch; MindFormers prints ``step:[cur/per_epoch]`` within
the epoch when it prints ``Epoch:[cur/total]``, and the global step over ``training.steps`` in
the step-only form.  The global step of a record is what the line supports:
``(epoch - 1) * steps_per_epoch + step`` where the steps per epoch are known (MindFormers prints
them; for LossMonitor they are the last step seen of an epoch that ended), the step itself in
epoch 1 and in the step-only form, and unknown (None) otherwise.

Which device a line belongs to
------------------------------
Only the ``===`` lines name their device.  A file from a per-device layout (msrun's
``worker_<N>.log``, the model zoo's ``LOG<N>/log.txt``, our ``logs/rank_<R>.log``) gives the device
for every line (see ``monitoring.sources``).  A single file written by several devices at once (the
seed README's "训练结果" block: four devices, lines interleaved) is demultiplexed with one documented
assumption: **the devices print each kind of line in turn, in device order**.  Lines that carry a
position (the epoch and step of a step line, the epoch of a ``val_loss`` line) show it: in a run of
consecutive lines of one kind, a line repeating the position of the line before is the next
device's, and a line with a new position starts again at the first device (one device printing
every step gives steps 1, 2, 3, ... and stays one device).  Lines without a position (TimeMonitor)
take the k-th device for the k-th line of their run (modulo ``devices`` when it is known).  A run
ends at the next recognised line of another kind; unrecognised lines do not end it.  Slot k is
device k when the ``===`` lines show ids below the number of slots (devices numbered 0..N-1); a
single-device log maps slot 0 to the one device id its ``===`` lines name.

``TextLogParser.layout()`` says what a file's lines support (``Layout``: how many devices and
why); ``monitoring.sources`` reads the head of a lone log with it to choose between one device and
several before the file is followed.
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


# MindFormers' MFLossMonitor: "{ Epoch:[%3d/%3d], step:[%5d/%5d], loss: %5.3f, per_step_time: %dms, ..."
# (sink mode), "loss:[%5.3f/%5.3f]" (current/mean, no sink), older "..., time:%5.3f ms, ..."; its
# PyNative trainer prints "{ step:[%5d/%5d], loss: %f, per_step_time: %dms, ..." (global step / total).
_MF_RE = re.compile(r"(?:Epoch:\s*\[\s*(\d+)\s*/\s*(\d+)\s*\]\s*,\s*)?step:\s*\[\s*(\d+)\s*/\s*(\d+)\s*\]\s*,"
                    r"\s*loss:\s*\[?\s*" + _NUM)
_MF_TIME_RE = re.compile(r"(?:per_step_time|\btime):\s*" + _NUM + r"\s*ms")


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
    if "step:[" in stripped or "step: [" in stripped:
        m = _MF_RE.search(stripped)
        if m:
            return _mindformers(stripped, m)
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


def _mindformers(line: str, m: "re.Match[str]") -> TextRecord:
    step, total = int(m.group(3)), int(m.group(4))
    t = _MF_TIME_RE.search(line, m.end())
    fields: Dict[str, Any] = {"loss": _f(m.group(5)), "step_time_s": _ms_to_s(t.group(1)) if t else None}
    if m.group(1) is not None:
        epoch = int(m.group(1))
        fields.update(epoch=epoch, epochs=int(m.group(2)) or None, step=step, steps_per_epoch=total or None,
                      global_step=(epoch - 1) * total + step if epoch >= 1 and total else None)
    else:                                    # step-only form: the step is the global step
        fields.update(epoch=None, step=step, global_step=step, steps_total=total or None)
    return TextRecord("step", fields)


@dataclass(frozen=True)
class Layout:
    """What the lines of one file support: ``devices`` writing it (None: no per-device line seen)."""
    devices: Optional[int]
    reason: str
    device_ids: tuple = ()


def _position(rec: TextRecord) -> Optional[tuple]:
    """Where in the run a line stands (None: the line does not say)."""
    if rec.kind == "step":
        return (rec.fields.get("epoch"), rec.fields.get("step"))
    if rec.kind == "val":
        return (rec.fields.get("epoch"),)
    return None


class TextLogParser:
    """Stateful parser of one text log file: recognises lines and assigns each to a rank.

    ``rank``/``device`` (from the file's path) pin every line to that rank.  Without them, the
    interleaving assumption of the module docstring applies: a line without a device id gets the
    rank of its slot, a ``===`` line the rank of its device id; ``devices`` (when known) bounds the
    slots.  ``feed`` returns the record with ``rank`` set (and ``device`` where known, and
    ``global_step`` in a step record's fields where the lines support one), or None for an
    unrecognised line.
    """

    def __init__(self, rank: Optional[int] = None, device: Optional[int] = None,
                 devices: Optional[int] = None) -> None:
        self.rank = rank
        self.device = device
        self.devices = devices if devices and devices > 0 else None
        self.line_no = 0
        self.recognised = 0            # recognised lines of any kind
        self._run_kind: Optional[str] = None
        self._run_pos: Optional[tuple] = None
        self._run_slot = -1
        self.slots = 1                 # estimated number of devices writing this file
        self.repeats = 1               # most devices seen repeating one position
        self.positioned = 0            # lines that carry a position (step, val)
        self.unpositioned_run = 0      # longest run of lines without a position
        self.device_ids: List[int] = []
        self._progress: Dict[int, list] = {}   # rank -> [epoch, last step, steps per epoch]

    def feed(self, line: Any) -> Optional[TextRecord]:
        self.line_no += 1
        rec = parse_text_line(line)
        if rec is None:
            return None
        self.recognised += 1
        rec.line_no = self.line_no
        if rec.kind in ("event", "eval"):     # job-level or self-describing: not a device's turn
            return rec
        if self.rank is not None or self.device is not None:
            rec.rank = self.rank if self.rank is not None else self.device
            if rec.device is None:
                rec.device = self.device
        else:
            slot = self._advance(rec)
            if rec.device is None:
                rec.rank = slot
            else:
                if rec.device not in self.device_ids:
                    self.device_ids.append(rec.device)
                    self.device_ids.sort()
                rec.rank = self.device_rank(rec.device)
        if rec.kind == "step":
            self._global_step(rec)
        return rec

    def _advance(self, rec: TextRecord) -> int:
        pos = _position(rec)
        if pos is not None:
            self.positioned += 1
        if rec.kind == self._run_kind and (pos is None or pos == self._run_pos):
            self._run_slot += 1
        else:
            self._run_kind, self._run_slot = rec.kind, 0
        self._run_pos = pos
        if pos is None:
            self.unpositioned_run = max(self.unpositioned_run, self._run_slot + 1)
        else:
            self.repeats = max(self.repeats, self._run_slot + 1)
        if self.devices:
            return self._run_slot % self.devices
        self.slots = max(self.slots, self._run_slot + 1)
        return self._run_slot

    def _global_step(self, rec: TextRecord) -> None:
        f = rec.fields
        if "global_step" in f:               # the line says it (MindFormers)
            return
        epoch, step = f.get("epoch"), f.get("step")
        prog = self._progress.setdefault(rec.rank if rec.rank is not None else 0, [None, None, None])
        if prog[0] is not None and epoch == prog[0] + 1 and prog[1]:
            prog[2] = max(prog[2] or 0, prog[1])      # the epoch that ended had this many steps
        if epoch != prog[0]:
            prog[0], prog[1] = epoch, step
        else:
            prog[1] = max(prog[1] or 0, step or 0)
        if epoch == 1:
            f["global_step"] = step
        elif epoch and prog[2] and step:
            f["global_step"] = (epoch - 1) * prog[2] + step
        else:
            f["global_step"] = None

    def device_rank(self, device: int) -> int:
        """The rank (slot) of a device id named by a ``===`` line (see the module docstring)."""
        ids = self.device_ids
        if all(d < max(self.devices or self.slots, len(ids)) for d in ids):
            return device                    # devices numbered 0..N-1: device k is slot k
        return ids.index(device) if device in ids else len(ids)   # e.g. a one-device log on device 3

    def layout(self) -> Layout:
        """What the lines fed so far support (see ``Layout``); for a file fed without a pinned rank."""
        ids = tuple(self.device_ids)
        n = max(self.repeats, len(ids))
        if n > 1:
            why = (f"each step or epoch number appears up to {self.repeats} times in a row"
                   if self.repeats >= len(ids) else f"its === lines name devices {','.join(map(str, ids))}")
            return Layout(n, f"{n} devices writing in turn ({why})", ids)
        if self.positioned or ids:
            return Layout(1, "one device (step and epoch numbers advance line by line"
                          + (f", device {ids[0]})" if ids else ")"), ids)
        if self.unpositioned_run:
            return Layout(1, "one device (no line carries a step number or device id; "
                          "--devices N reads it as N devices writing in turn)", ids)
        return Layout(None, "no per-device lines", ids)
