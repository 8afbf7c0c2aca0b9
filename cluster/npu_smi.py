"""`npu-smi info`: Ascend devices, their health and which process uses which device.

The table comes in two layouts that this parser reads from their header rows (the column names,
not fixed positions):

* 910B: one chip per NPU; the second row of each NPU starts with the chip index only::

    | NPU   Name                | Health        | Power(W)    Temp(C)           Hugepages-Usage(page)|
    | Chip                      | Bus-Id        | AICore(%)   Memory-Usage(MB)  HBM-Usage(MB)        |
    | 0     910B4-1             | OK            | 91.3        33                0    / 0             |
    | 0                         | 0000:xx:00.0  | 0           0    / 0          3197 / 65536         |

* A3: two chips per NPU, each chip a device with its own ``Phy-ID`` (the ``device_id``); a chip's
  power may be ``-``.  (310P's ``Chip Device`` column is read the same way.)

An optional process section follows (``| NPU  Chip | Process id | Process name | Process memory(MB) |``
with one row per process, or ``No running processes found in NPU N``).

Public API (monitoring/ exports these fields as Prometheus metrics):

``NpuChip``: ``npu_id, chip_id, phy_id, name, health, bus_id, power_w, temp_c, aicore_pct,
memory_used_mb, memory_total_mb, hbm_used_mb, hbm_total_mb, hugepages_used, hugepages_total,
processes`` (list of ``NpuProcess(npu_id, chip_id, pid, name, memory_mb)``); ``device_id`` (the
physical id: Phy-ID when the table has it, else the NPU id); ``healthy`` (health == "OK");
``to_device()`` -> ``cluster.devices.Device``; ``to_dict()``.  Numbers shown as ``-``/``NA`` are None.
``parse_npu_smi_info(text, source="npu-smi info") -> list[NpuChip]``: raises ``NpuSmiError``
(``source:line: ...``) on anything it cannot read; text without a device table is an error.
``run_npu_smi(timeout=10) -> str | None``: the text of ``npu-smi info``, None when npu-smi is not
installed or fails.
``read_npu_smi(timeout=10) -> list[NpuChip] | None``: run and parse (None when not installed).
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

from cluster.errors import ClusterInputError
from cluster.devices import Device


class NpuSmiError(ClusterInputError):
    """An `npu-smi info` table that cannot be read."""


@dataclass
class NpuProcess:
    npu_id: int
    chip_id: int
    pid: int
    name: str
    memory_mb: Optional[float] = None


@dataclass
class NpuChip:
    npu_id: int
    chip_id: int = 0
    phy_id: Optional[int] = None
    name: str = ""
    health: str = ""
    bus_id: str = ""
    power_w: Optional[float] = None
    temp_c: Optional[float] = None
    aicore_pct: Optional[float] = None
    memory_used_mb: Optional[float] = None
    memory_total_mb: Optional[float] = None
    hbm_used_mb: Optional[float] = None
    hbm_total_mb: Optional[float] = None
    hugepages_used: Optional[float] = None
    hugepages_total: Optional[float] = None
    processes: List[NpuProcess] = field(default_factory=list)
    extra: Dict[str, str] = field(default_factory=dict)   # columns this parser does not know

    @property
    def device_id(self) -> int:
        return self.phy_id if self.phy_id is not None else self.npu_id

    @property
    def healthy(self) -> bool:
        return self.health.upper() == "OK"

    def to_device(self) -> Device:
        return Device(device_id=self.device_id, npu_id=self.npu_id, chip_id=self.chip_id,
                      phy_id=self.phy_id, name=self.name or None, bus_id=self.bus_id or None)

    def to_dict(self) -> Dict:
        out = asdict(self)
        out["device_id"] = self.device_id
        out["healthy"] = self.healthy
        return out


_NA = {"-", "NA", "N/A", "--", ""}

#: header column name -> (field for a single value) or (used field, total field) for "a / b"
_COLUMNS: Dict[str, Tuple[str, ...]] = {
    "power(w)": ("power_w",),
    "temp(c)": ("temp_c",),
    "aicore(%)": ("aicore_pct",),
    "memory-usage(mb)": ("memory_used_mb", "memory_total_mb"),
    "hbm-usage(mb)": ("hbm_used_mb", "hbm_total_mb"),
    "hugepages-usage(page)": ("hugepages_used", "hugepages_total"),
}


def _cells(line: str) -> List[str]:
    inner = line.strip()
    inner = inner[1:] if inner.startswith("|") else inner
    inner = inner[:-1] if inner.endswith("|") else inner
    return [c.strip() for c in inner.split("|")]


def _tokens(cell: str) -> List[str]:
    """Split a metrics cell, joining ``a / b`` into one token ``a/b``."""
    raw = cell.replace("/", " / ").split()
    out: List[str] = []
    i = 0
    while i < len(raw):
        tok = raw[i]
        if tok == "/" and out and i + 1 < len(raw):
            out[-1] = out[-1] + "/" + raw[i + 1]
            i += 2
            continue
        out.append(tok)
        i += 1
    return out


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source

    def err(self, msg: str, lineno: Optional[int] = None) -> NpuSmiError:
        return NpuSmiError(msg, self.source, lineno)

    def num(self, tok: str, what: str, lineno: int) -> Optional[float]:
        if tok.upper() in _NA:
            return None
        try:
            val = float(tok)
        except ValueError:
            raise self.err(f"{what}: {tok!r} is not a number", lineno) from None
        if val != val or val in (float("inf"), float("-inf")):
            raise self.err(f"{what}: {tok!r} is not a finite number", lineno)
        return val

    def int_(self, tok: str, what: str, lineno: int) -> int:
        if not (tok.isdigit() and tok.isascii()):
            raise self.err(f"{what}: {tok!r} is not a non-negative integer", lineno)
        return int(tok)

    def metrics(self, chip: NpuChip, names: List[str], cell: str, lineno: int) -> None:
        toks = _tokens(cell)
        if len(toks) != len(names):
            raise self.err(f"expected {len(names)} values ({' '.join(names)}), got {len(toks)}: {cell!r}",
                           lineno)
        for name, tok in zip(names, toks):
            spec = _COLUMNS.get(name.lower())
            if spec is None:
                chip.extra[name] = tok
            elif len(spec) == 1:
                if "/" in tok and tok.upper() not in _NA:
                    raise self.err(f"{name}: expected one number, got {tok!r}", lineno)
                setattr(chip, spec[0], self.num(tok, name, lineno))
            else:
                if tok.upper() in _NA:
                    used = total = None
                else:
                    parts = tok.split("/")
                    if len(parts) != 2:
                        raise self.err(f"{name}: expected USED / TOTAL, got {tok!r}", lineno)
                    used, total = (self.num(p, name, lineno) for p in parts)
                setattr(chip, spec[0], used)
                setattr(chip, spec[1], total)


def _names(cell: str) -> List[str]:
    """Metric column names of a header cell; a name may be two words (npu-smi 25.x's ``NPU Util(%)``):
    words are joined until one ends with its unit in parentheses."""
    out: List[str] = []
    part: List[str] = []
    for word in cell.split():
        part.append(word)
        if word.endswith(")") or "(" not in " ".join(part) and not _wants_more(word):
            out.append(" ".join(part))
            part = []
    if part:
        out.append(" ".join(part))
    return out


def _wants_more(word: str) -> bool:
    """A word without a unit that is the first half of a two-word column name."""
    return "(" not in word and word.upper() in ("NPU", "AI", "HBM", "DDR")


def parse_npu_smi_info(text: str, source: str = "npu-smi info") -> List[NpuChip]:
    if not isinstance(text, str):
        raise NpuSmiError("expected the text of `npu-smi info`", source)
    p = _Parser(source)
    chips: List[NpuChip] = []
    names1: Optional[List[str]] = None     # metric names of a chip's first row
    names2: Optional[List[str]] = None     # ... and of its second row
    second_has_phy = False
    split = False                          # npu-smi 25.x: NPU ID | Name | Health | metrics (4 columns)
    second_has_chip = False                # 25.x: the second row's first cell holds a chip id
    section = None                         # None | "devices" | "processes"
    pending: Optional[Tuple[NpuChip, int]] = None   # chip whose second row is due
    by_key: Dict[Tuple[int, int], NpuChip] = {}
    proc_cols: Dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line.startswith("|"):
            continue  # borders (+---+, +===+), blank lines, banners
        cells = _cells(line)
        first = cells[0].split()
        head = first[0].lower() if first else ""
        joined = " ".join(cells).lower()
        if head == "npu" and len(first) > 1 and first[1].lower() == "name":
            if len(cells) < 3:
                raise p.err("device table header has fewer than 3 columns", lineno)
            names1, section, pending, split = _names(cells[2]), "devices", None, False
            continue
        if head == "npu" and [w.lower() for w in first] == ["npu", "id"] and len(cells) >= 4 \
                and cells[1].lower() == "name":
            names1, section, pending, split = _names(cells[3]), "devices", None, True
            continue
        if section == "devices" and pending is None and not split and head == "chip" and (
                len(cells) >= 2 and cells[1].lower().startswith("bus")):
            if len(cells) < 3:
                raise p.err("device table header has fewer than 3 columns", lineno)
            names2 = _names(cells[2])
            second_has_phy = len(first) > 1
            continue
        if section == "devices" and pending is None and split and len(cells) >= 4 \
                and cells[2].lower().startswith("bus") and head in ("", "chip"):
            names2 = _names(cells[3])
            second_has_chip = head == "chip"
            second_has_phy = bool(cells[1].strip())
            continue
        if "process id" in joined and head == "npu":
            if names1 is None:
                raise p.err("a process table, but no device table header was recognised above it (expected "
                            "`| NPU  Name | Health | ...` or `| NPU ID | Name | Health | ...`)", lineno)
            if pending is not None:
                raise p.err(f"NPU {pending[0].npu_id}: its second row (Chip, Bus-Id, ...) is missing", lineno)
            section = "processes"
            proc_cols = {"pid": 1, "name": 2, "mem": 3, "chip": -1}
            for k, c in enumerate(cells):
                c = c.lower()
                if k and c.startswith("chip"):
                    proc_cols["chip"] = k
                elif c.startswith("process id"):
                    proc_cols["pid"] = k
                elif c.startswith("process name"):
                    proc_cols["name"] = k
                elif c.startswith("process memory"):
                    proc_cols["mem"] = k
            continue
        if section is None:
            continue  # rows above the first table header (the npu-smi version banner)
        if section == "processes":
            if joined.startswith("no running processes"):
                continue
            chip_in_first = proc_cols["chip"] < 0 and not split
            if len(cells) <= max(proc_cols.values()) or not first or (chip_in_first and len(first) < 2):
                raise p.err("expected a process row: NPU Chip | Process id | Process name | Process memory(MB)",
                            lineno)
            npu = p.int_(first[0], "NPU", lineno)
            if proc_cols["chip"] >= 0:
                chip_idx = p.int_(cells[proc_cols["chip"]].strip() or "0", "Chip", lineno)
            else:
                chip_idx = p.int_(first[1], "Chip", lineno) if len(first) > 1 else 0
            pid = p.int_(cells[proc_cols["pid"]], "Process id", lineno)
            mem_words = cells[proc_cols["mem"]].split()
            mem = p.num(mem_words[0] if mem_words else "-", "Process memory(MB)", lineno)
            owner = by_key.get((npu, chip_idx))
            if owner is None:  # some layouts may give the chip's physical id here
                owner = next((c for c in chips if c.npu_id == npu and c.phy_id == chip_idx), None)
            if owner is None:
                raise p.err(f"process {pid} runs on NPU {npu} chip {chip_idx}, which the device table "
                            f"does not list", lineno)
            owner.processes.append(NpuProcess(npu_id=npu, chip_id=chip_idx, pid=pid,
                                              name=cells[proc_cols["name"]], memory_mb=mem))
            continue
        # device rows
        if names1 is None or names2 is None:
            raise p.err("device row before the table's two header rows (| NPU Name ... / | Chip ...)", lineno)
        width = 4 if split else 3
        if len(cells) < width:
            raise p.err(f"expected {width} columns ({'NPU ID | Name' if split else 'NPU Name'} | Health | "
                        f"metrics), got {len(cells)}", lineno)
        if pending is None:
            if len(first) < 1:
                raise p.err("device row without an NPU id", lineno)
            npu = p.int_(first[0], "NPU", lineno)
            if split:
                chip = NpuChip(npu_id=npu, name=cells[1], health=cells[2])
                p.metrics(chip, names1, cells[3], lineno)
            else:
                chip = NpuChip(npu_id=npu, name=" ".join(first[1:]), health=cells[1])
                p.metrics(chip, names1, cells[2], lineno)
            pending = (chip, lineno)
        else:
            chip = pending[0]
            if split:
                if second_has_chip:
                    chip.chip_id = p.int_(first[0] if first else "", "Chip", lineno)
                elif first:
                    raise p.err(f"NPU {chip.npu_id}: expected its second row to start with an empty cell, "
                                f"got {cells[0]!r}", lineno)
                if second_has_phy:
                    chip.phy_id = p.int_(cells[1], "Phy-ID", lineno)
                chip.bus_id = cells[2]
                p.metrics(chip, names2, cells[3], lineno)
            else:
                want = 2 if second_has_phy else 1
                if len(first) != want:
                    raise p.err(f"NPU {chip.npu_id}: expected its second row to start with "
                                f"{'Chip Phy-ID' if second_has_phy else 'Chip'}, got {cells[0]!r}", lineno)
                chip.chip_id = p.int_(first[0], "Chip", lineno)
                if second_has_phy:
                    chip.phy_id = p.int_(first[1], "Phy-ID", lineno)
                chip.bus_id = cells[1]
                p.metrics(chip, names2, cells[2], lineno)
            key = (chip.npu_id, chip.chip_id)
            if key in by_key:
                raise p.err(f"NPU {chip.npu_id} chip {chip.chip_id} listed twice", lineno)
            if any(c.device_id == chip.device_id for c in chips):
                raise p.err(f"device id {chip.device_id} listed twice", lineno)
            by_key[key] = chip
            chips.append(chip)
            pending = None
    if names1 is None:
        raise NpuSmiError("no `npu-smi info` device table found (a header row `| NPU  Name | Health | ...` "
                          "or `| NPU ID | Name | Health | ...`)", source)
    if pending is not None:
        raise p.err(f"NPU {pending[0].npu_id}: the table ends before its second row (Chip, Bus-Id, ...)",
                    pending[1])
    return chips


def card_rules(chips: List[NpuChip]) -> Optional[str]:
    """``"a3"`` when the table shows two chips per NPU (Atlas A3: each chip a device), else None."""
    per_npu: Dict[int, int] = {}
    for c in chips:
        per_npu[c.npu_id] = per_npu.get(c.npu_id, 0) + 1
    return "a3" if per_npu and max(per_npu.values()) == 2 else None


def run_npu_smi(timeout: float = 10.0) -> Optional[str]:
    exe = shutil.which("npu-smi")
    if not exe:
        return None
    try:
        proc = subprocess.run([exe, "info"], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout


def read_npu_smi(timeout: float = 10.0) -> Optional[List[NpuChip]]:
    text = run_npu_smi(timeout)
    if text is None:
        return None
    return parse_npu_smi_info(text, source="npu-smi info")
