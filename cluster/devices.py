"""Devices and servers: the value types every other part passes around, and device discovery.

Public API (names are stable; the orchestrator and the multi-host launcher build on them):

``ClusterInputError(ValueError)``
    Every bad-input error of ``cluster/`` (hccn.conf, npu-smi tables, device lists, rank tables).
    ``str(err)`` reads ``SOURCE:LINE: MESSAGE`` (or ``SOURCE: MESSAGE``); the parts are also
    attributes ``source``, ``line``, ``message``.  Sub-classes: ``DeviceListError`` (here),
    ``HccnError`` (cluster/hccn.py), ``NpuSmiError`` (cluster/npu_smi.py), ``RankTableError``
    (cluster/ranktable.py).  Callers that only want "bad input, exit 2" catch ``ClusterInputError``.

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

``cpu_server(count=None, server_id="127.0.0.1") -> Server``
    CPU backend: devices are logical slots 0..N-1 (N from ``count`` or ``os.cpu_count()``), no IPs.

``ascend_server(server_id, *, hccn_conf_text=None, npu_smi_text=None, ips=None, visible=None, ...)``
    Build one Ascend server from texts (read locally, or fetched over SSH by the multi-host launcher):
    device ids from the npu-smi table, else from hccn.conf, else from ``ips``; IPs from ``ips``,
    else hccn.conf.  ``visible`` is a device-list spec applied to the ids found.

``discover_local(backend="auto", *, devices=None, hccn_conf=None, npu_smi=None, ips=None,
use_hccn_tool=True, server_id=None, cpu_count=None, npu_smi_text=None) -> Server``
    The same on this machine: reads ``/etc/hccn.conf`` / runs ``npu-smi info`` and ``hccn_tool``
    when present; ``backend="auto"`` is Ascend when any of them answers, else CPU.

``resolve_backend(backend="auto", hccn_conf=None, npu_smi=None, ips=None) -> str``
    ``auto`` -> ``ascend`` when Ascend inputs are given or npu-smi / hccn_tool / /etc/hccn.conf exist, else ``cpu``.

``default_server_id() -> str``: this host's IP as the rank table wants it (as hccl_tools does).
``parse_ip_list("0=IP,1=IP" | "IP,IP") -> dict[int, str]``; ``format_device_list([0,1,2,3,6]) -> "0-3,6"``.
"""
from __future__ import annotations

import os
import re
import socket
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple


class ClusterInputError(ValueError):
    """Bad input to cluster/: names the source (file, option) and, when known, the line."""

    def __init__(self, message: str, source: Optional[str] = None, line: Optional[int] = None) -> None:
        self.message = message
        self.source = source
        self.line = line
        super().__init__(self._text())

    def _text(self) -> str:
        if self.source and self.line is not None:
            return f"{self.source}:{self.line}: {self.message}"
        if self.source:
            return f"{self.source}: {self.message}"
        return self.message


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

    def with_ip(self, ip: Optional[str]) -> "Device":
        return replace(self, ip=ip)

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


# ------------------------------------------------------------------ discovery

def default_server_id() -> str:
    """This host's IP address (hostname lookup, as the model zoo's hccl_tools does), else 127.0.0.1."""
    try:
        ip = socket.gethostbyname(socket.gethostname())
    except OSError:
        ip = ""
    return ip or "127.0.0.1"


def cpu_server(count: Optional[int] = None, server_id: str = "127.0.0.1",
               visible: Any = None) -> Server:
    """CPU backend: logical slots 0..N-1 (N = ``count`` or the CPU count); ``visible`` selects some."""
    n = count if count is not None else (os.cpu_count() or 1)
    if n < 1 or n > MAX_ID + 1:
        raise DeviceListError(f"CPU slot count must be 1..{MAX_ID + 1}, got {n}", "--devices")
    if visible is not None and count is None:
        # `--devices 8` on a CPU host means 8 slots, whatever the core count
        ids = parse_visible_devices(visible, None)
    else:
        ids = parse_visible_devices(visible if visible is not None else n, list(range(n)))
    return Server(server_id=server_id, devices=tuple(Device(device_id=i, logical_id=k)
                                                     for k, i in enumerate(ids)))


def ascend_server(server_id: str, *, hccn_conf_text: Optional[str] = None,
                  npu_smi_text: Optional[str] = None, ips: Optional[Mapping[int, str]] = None,
                  visible: Any = None, hccn_source: str = "/etc/hccn.conf",
                  npu_smi_source: str = "npu-smi info", host: Optional[str] = None,
                  host_ip: Optional[str] = None, super_pod_id: Optional[str] = None,
                  super_device_ids: Optional[Mapping[int, int]] = None) -> Server:
    """One Ascend server from the texts of its hccn.conf / npu-smi table / explicit IPs.

    Device ids come from npu-smi when given (the devices that exist), else from hccn.conf, else
    from ``ips``.  IPs: ``ips`` first, then hccn.conf.  A device without an IP keeps ``ip=None``;
    the rank-table writer rejects it with a clear message.
    """
    from cluster import hccn, npu_smi

    base: Dict[int, Device] = {}
    card_rules: Optional[str] = None
    if npu_smi_text is not None:
        chips = npu_smi.parse_npu_smi_info(npu_smi_text, source=npu_smi_source)
        for chip in chips:
            dev = chip.to_device()
            base[dev.device_id] = dev
        card_rules = npu_smi.card_rules(chips)
    conf_ips: Dict[int, str] = {}
    if hccn_conf_text is not None:
        conf_ips = hccn.device_ips(hccn.parse_hccn_conf(hccn_conf_text, source=hccn_source))
        if npu_smi_text is None and any(i > 7 for i in conf_ips):
            card_rules = "a3"        # NIC addresses beyond 0-7: more devices than a 910-class server has
    if not base:
        for i in sorted(set(conf_ips) | set(ips or {})):
            base[i] = Device(device_id=i)
    if not base:
        raise ClusterInputError(
            "no Ascend devices found: give an hccn.conf (--hccn-conf), an `npu-smi info` table "
            "(--npu-smi) or device IPs (--ips)", f"server {server_id}")
    ids = sorted(base)
    chosen = parse_visible_devices(visible if visible is not None else len(ids), ids)
    devices = []
    for k, i in enumerate(chosen):
        ip = (ips or {}).get(i) or conf_ips.get(i) or base[i].ip
        sdid = (super_device_ids or {}).get(i, base[i].super_device_id)
        logical = base[i].logical_id if base[i].logical_id is not None else ids.index(i)
        devices.append(replace(base[i], ip=ip, super_device_id=sdid, logical_id=logical))
    return Server(server_id=server_id, devices=tuple(devices), host=host, host_ip=host_ip,
                  super_pod_id=super_pod_id, card_rules=card_rules)


def _read_text(path: str, what: str) -> str:
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError as exc:
        raise ClusterInputError(f"cannot read {what}: {exc.strerror or exc}", path) from None


def resolve_backend(backend: Optional[str] = "auto", *, hccn_conf: Optional[str] = None,
                    npu_smi: Optional[str] = None, ips: Optional[Mapping[int, str]] = None) -> str:
    """``auto`` -> ``ascend`` when Ascend files/IPs are given or npu-smi, hccn_tool or /etc/hccn.conf
    exist on this machine, else ``cpu``.  Other values are checked and returned."""
    import shutil

    from cluster.hccn import DEFAULT_HCCN_CONF

    b = (backend or "auto").lower()
    if b not in ("auto", "cpu", "ascend", "gpu"):
        raise ClusterInputError(f"unknown backend {backend!r}; use auto, cpu, gpu or ascend", "--backend")
    if b != "auto":
        return b
    if hccn_conf or npu_smi or ips:
        return "ascend"
    if shutil.which("npu-smi") or shutil.which("hccn_tool") or os.path.exists(DEFAULT_HCCN_CONF):
        return "ascend"
    return "cpu"


def discover_local(backend: str = "auto", *, devices: Any = None, hccn_conf: Optional[str] = None,
                   npu_smi: Optional[str] = None, ips: Optional[Mapping[int, str]] = None,
                   use_hccn_tool: bool = True, server_id: Optional[str] = None,
                   cpu_count: Optional[int] = None, npu_smi_text: Optional[str] = None,
                   host_ip: Optional[str] = None, super_pod_id: Optional[str] = None,
                   super_device_ids: Optional[Mapping[int, int]] = None) -> Server:
    """Discover this machine's devices (see the module docstring).

    ``hccn_conf``/``npu_smi``: files to read instead of ``/etc/hccn.conf`` / running ``npu-smi info``.
    ``devices``: the visible-device spec (``8``, ``0-3``).  On CPU/GPU the devices are logical slots.
    ``npu_smi_text``: an `npu-smi info` text already read (so a caller that also wants the health
    fields runs npu-smi once).  ``host_ip``, ``super_pod_id``, ``super_device_ids``: rank table
    format 1.2 settings of this server (a super_device_id for a device not chosen is an error).
    """
    from cluster import hccn
    from cluster import npu_smi as smi

    b = resolve_backend(backend, hccn_conf=hccn_conf, npu_smi=npu_smi, ips=ips)
    sid = server_id or default_server_id()
    if b in ("cpu", "gpu"):
        return cpu_server(cpu_count, server_id=sid, visible=devices)
    conf_src = hccn_conf or hccn.DEFAULT_HCCN_CONF
    conf_text = None
    if hccn_conf or (not ips and os.path.exists(hccn.DEFAULT_HCCN_CONF)):
        conf_text = _read_text(conf_src, "hccn.conf")
    if npu_smi_text is not None:
        smi_text: Optional[str] = npu_smi_text
    else:
        smi_text = _read_text(npu_smi, "npu-smi table") if npu_smi else smi.run_npu_smi()
    explicit = dict(ips or {})
    if use_hccn_tool and conf_text is None and not explicit:
        if smi_text is not None:
            ids: Iterable[int] = [c.device_id for c in smi.parse_npu_smi_info(smi_text, npu_smi or "npu-smi info")]
        else:
            ids = range(8)
        explicit = hccn.query_hccn_tool(ids) or {}
    server = ascend_server(sid, hccn_conf_text=conf_text, npu_smi_text=smi_text, ips=explicit,
                           visible=devices, hccn_source=conf_src, npu_smi_source=npu_smi or "npu-smi info",
                           host_ip=host_ip, super_pod_id=super_pod_id, super_device_ids=super_device_ids)
    unknown = sorted(set(super_device_ids or {}) - set(server.device_ids))
    if unknown:
        raise ClusterInputError(f"device {unknown[0]} is not among the chosen devices {server.device_ids}",
                                "--super-device-ids")
    return server


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


def parse_ip_list(spec: str, source: str = "--ips") -> Dict[int, str]:
    """Explicit device IPs: ``"0=192.168.1.10,1=192.168.1.11"`` or plain ``"192.168.1.10,192.168.1.11"``
    (devices 0, 1, ... in order)."""
    from cluster.hccn import check_ipv4

    out = parse_device_mapping(spec, source)
    if not out:
        raise ClusterInputError("no device IPs given", source)
    for dev, ip in out.items():
        err = check_ipv4(ip)
        if err:
            raise ClusterInputError(f"device {dev}: {err}", source)
    return out


def iter_devices(servers: Iterable[Server]) -> Iterable[Tuple[Server, Device]]:
    for s in servers:
        for d in s.devices:
            yield s, d
