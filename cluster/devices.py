"""Devices and servers: the value types every other part passes around, and device lists.

``Device(device_id, ip=None, logical_id=None, npu_id=None, chip_id=None, phy_id=None,
super_device_id=None, name=None, bus_id=None)``
    One accelerator device (an Ascend chip, or a logical CPU slot).  ``device_id`` is the physical
    id: what ``DEVICE_ID`` and the rank table's ``device_id`` hold.  ``ip`` is the device NIC IP
    (rank table ``device_ip``).

``Server(server_id, devices, host=None, host_ip=None, super_pod_id=None, card_rules=None)``
    One machine: ``server_id`` is what the rank table calls it (normally the host's IP),
    ``host`` how SSH reaches it, ``card_rules`` the rank-table card rules its hardware implies
    (``"a3"`` when npu-smi shows two chips per NPU, or hccn.conf alone lists devices beyond 0-7).

``parse_visible_devices(spec, available=None, source="--devices") -> list[int]``
    ``"0-3,6"`` -> ``[0, 1, 2, 3, 6]``; a bare number ``"8"`` is a *count*: the first 8 available
    devices (``"6,"`` selects device 6 alone).  Unknown ids, duplicates, reversed ranges, zero or
    too large counts are ``DeviceListError``.

``default_server_id() -> str``: this host's IP as the rank table wants it (as hccl_tools does).
``parse_device_ips`` / ``parse_super_device_ids``: per-device settings (``0=a,1=b``, ``a,b``, a mapping
or a list); ``format_device_list([0,1,2,3,6]) -> "0-3,6"``.

Discovery (what devices this machine has) is ``cluster/accelerators.py``; errors derive from
``cluster.errors.ClusterInputError``.
"""
from __future__ import annotations

import re
import socket
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from cluster.errors import ClusterInputError


class DeviceListError(ClusterInputError):
    """A bad visible-device list (``--devices``)."""


@dataclass(frozen=True)
class Device:
    """One device: physical id, NIC IP and what npu-smi says about where it sits."""
    device_id: int
    ip: Optional[str] = None
    logical_id: Optional[int] = None
    npu_id: Optional[int] = None
    chip_id: Optional[int] = None
    phy_id: Optional[int] = None
    super_device_id: Optional[int] = None
    name: Optional[str] = None
    bus_id: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Server:
    """One machine and the devices a job uses on it (in rank order)."""
    server_id: str
    devices: Tuple[Device, ...] = field(default_factory=tuple)
    host: Optional[str] = None
    host_ip: Optional[str] = None
    super_pod_id: Optional[str] = None
    card_rules: Optional[str] = None     # what the hardware implies ("a3": two chips per NPU), None: unknown

    def __post_init__(self) -> None:
        object.__setattr__(self, "devices", tuple(self.devices))

    @property
    def device_ids(self) -> List[int]:
        return [d.device_id for d in self.devices]

    def to_dict(self) -> Dict[str, Any]:
        out = asdict(self)
        out["devices"] = [d.to_dict() for d in self.devices]
        return out


# ------------------------------------------------------------------ visible-device lists

#: the largest device (or core) id a list may name; guards against "0-99999999999" eating the memory
MAX_ID = 65535

_RANGE = re.compile(r"^\s*(-?\d+)\s*(?:-\s*(-?\d+)\s*)?$")


def parse_visible_devices(spec: Any, available: Optional[Sequence[int]] = None,
                          source: str = "--devices") -> List[int]:
    """Parse a device list: ``"0-3,6"`` (ids), ``"8"`` (a count), ``"6,"`` (the single id 6).

    ``available`` are the ids that exist (None: any non-negative id is accepted; a count then means
    ``0..N-1``).  Returns ids in the order given.
    """
    if isinstance(spec, bool):
        raise DeviceListError(f"expected a device count or list like 0-3,6, got {spec!r}", source)
    if isinstance(spec, int):
        return _count(spec, available, source)
    if isinstance(spec, (list, tuple)):
        spec = ",".join(str(x) for x in spec) + ("," if len(spec) == 1 else "")
    if not isinstance(spec, str):
        raise DeviceListError(f"expected a device count or list like 0-3,6, got {spec!r}", source)
    text = spec.strip()
    if not text:
        raise DeviceListError("empty device list; give a count (8) or ids (0-3,6)", source)
    if "," not in text and "-" not in text.lstrip("-"):
        try:
            n = int(text)
        except ValueError:
            raise DeviceListError(f"{text!r} is not a device count or list like 0-3,6", source) from None
        return _count(n, available, source)
    ids: List[int] = []
    for part in text.split(","):
        if not part.strip():
            continue  # "6," means the single id 6
        m = _RANGE.match(part)
        if not m:
            raise DeviceListError(f"{part.strip()!r} is not a device id or range like 0-3", source)
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if lo < 0 or hi < 0:
            raise DeviceListError(f"device ids are not negative: {part.strip()!r}", source)
        if hi < lo:
            raise DeviceListError(f"reversed range {part.strip()!r}; write {hi}-{lo}", source)
        if hi > MAX_ID:
            raise DeviceListError(f"device id {hi} is too large (at most {MAX_ID})", source)
        ids.extend(range(lo, hi + 1))
    if not ids:
        raise DeviceListError("empty device list; give a count (8) or ids (0-3,6)", source)
    seen = set()
    dups = []
    for i in ids:
        if i in seen and i not in dups:
            dups.append(i)
        seen.add(i)
    if dups:
        raise DeviceListError(f"device id(s) listed twice: {_clip(_fmt_ids(sorted(dups)))}", source)
    if available is not None:
        known = set(available)
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise DeviceListError(
                f"unknown device id(s) {_clip(_fmt_ids(sorted(unknown)))}; this server has "
                f"{_clip(_fmt_ids(sorted(known))) or 'no devices'}", source)
    return ids


def _clip(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[:n] + "..."


def _count(n: int, available: Optional[Sequence[int]], source: str) -> List[int]:
    if n <= 0:
        hint = " (to pick device 0 alone, write 0,)" if n == 0 else ""
        raise DeviceListError(f"device count must be at least 1, got {n}{hint}", source)
    if n > MAX_ID + 1:
        raise DeviceListError(f"device count {n} is too large (at most {MAX_ID + 1})", source)
    if available is None:
        return list(range(n))
    avail = list(available)
    if n > len(avail):
        raise DeviceListError(
            f"{n} devices asked for, but this server has {len(avail)} ({_fmt_ids(sorted(avail)) or 'none'})",
            source)
    return avail[:n]


def _fmt_ids(ids: Sequence[int]) -> str:
    """[0,1,2,3,6] -> '0-3,6'."""
    out: List[str] = []
    i = 0
    ids = list(ids)
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(out)


format_device_list = _fmt_ids


# ------------------------------------------------------------------ this host

def default_server_id() -> str:
    """This host's IP address (hostname lookup, as the model zoo's hccl_tools does), else 127.0.0.1."""
    try:
        ip = socket.gethostbyname(socket.gethostname())
    except OSError:
        ip = ""
    return ip or "127.0.0.1"


def parse_device_mapping(spec: str, source: str) -> Dict[int, str]:
    """``"0=a,1=b"`` or plain ``"a,b"`` (devices 0, 1, ... in order) -> {device id: text}; each device once."""
    out: Dict[int, str] = {}
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    for k, part in enumerate(parts):
        if "=" in part:
            key, _, value = part.partition("=")
            try:
                dev = int(key.strip())
            except ValueError:
                raise ClusterInputError(f"{key.strip()!r} is not a device id in {part!r}", source) from None
            if dev < 0:
                raise ClusterInputError(f"device ids are not negative: {part!r}", source)
        else:
            dev, value = k, part
        if dev in out:
            raise ClusterInputError(f"device {dev} given twice", source)
        out[dev] = value.strip()
    return out


def device_mapping(value: Any, source: str) -> Optional[Dict[int, str]]:
    """'0=a,1=b' / 'a,b' / {0: a} / [a, b] (a hosts file's YAML) -> {0: 'a', ...}; None stays None."""
    if value is None:
        return None
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            try:
                out[int(k)] = str(v)
            except (TypeError, ValueError):
                raise ClusterInputError(f"{k!r} is not a device id", source) from None
        return out
    if isinstance(value, (list, tuple)):
        return {i: str(v) for i, v in enumerate(value)}
    return parse_device_mapping(value, source)


def parse_super_device_ids(value: Any, source: str = "--super-device-ids") -> Optional[Dict[int, int]]:
    """super_device_id per device (forms of ``device_mapping``); each a non-negative integer."""
    m = device_mapping(value, source)
    if m is None:
        return None
    out = {}
    for k, v in m.items():
        if not (v.isdigit() and v.isascii()):
            raise ClusterInputError(f"device {k}: super_device_id {v!r} is not a non-negative integer", source)
        out[k] = int(v)
    return out


def parse_device_ips(value: Any, source: str = "--ips") -> Optional[Dict[int, str]]:
    """Device IPs (forms of ``device_mapping``); each a dotted IPv4 address."""
    from cluster.hccn import check_ipv4

    m = device_mapping(value, source)
    if m is None:
        return None
    for k, ip in m.items():
        err = check_ipv4(ip)
        if err:
            raise ClusterInputError(f"device {k}: {err}", source)
    return m
