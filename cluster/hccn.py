"""Ascend device NIC addresses: ``/etc/hccn.conf`` and ``hccn_tool -i N -ip -g``.

``/etc/hccn.conf`` holds one ``KEY_N=VALUE`` per line, ``N`` the physical device id::

    address_0=192.168.100.101
    netmask_0=255.255.255.0
    netdetect_0=192.168.100.1

An Atlas A3 server lists ``address_0`` to ``address_15`` (one per chip) and may hold several
``arp_N=`` lines per device (static ARP entries); keys other than the IP keys may repeat.

Public API:

``parse_hccn_conf(text, source="/etc/hccn.conf") -> dict[int, HccnDevice]``
    Every device that has any key.  Blank lines and ``#`` comments are ignored.  A line that is not
    ``KEY_N=VALUE``, a device id that is not a number, a bad IPv4 in an address/netmask/netdetect/
    gateway value, or an IP key twice for a device raise ``HccnError`` naming ``source:line``; other
    keys may repeat (``HccnDevice.repeated`` keeps every value).
``read_hccn_conf(path="/etc/hccn.conf")``: the same from a file (missing file: ``HccnError``).
``device_ips(entries) -> dict[int, str]``: device id -> ``address`` (devices without one are left out).
``parse_hccn_tool_ip(text, source=...) -> (ip, netmask)``: ``ipaddr:IP`` / ``netmask:MASK`` output.
``query_hccn_tool(device_ids, timeout=5.0) -> dict[int, str] | None``: runs ``hccn_tool`` for each
device when it is installed (None when it is not, or when it answers for no device).
``check_ipv4(text) -> str | None``: an error message, or None when ``text`` is a dotted IPv4 address.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

from cluster.errors import ClusterInputError

DEFAULT_HCCN_CONF = "/etc/hccn.conf"

#: keys whose value must be an IPv4 address
IP_KEYS = ("address", "netmask", "netdetect", "gateway")

_LINE = re.compile(r"^([A-Za-z][A-Za-z0-9]*(?:_[A-Za-z][A-Za-z0-9]*)*)_([^_=\s]*)\s*=\s*(.*?)\s*$")


class HccnError(ClusterInputError):
    """A malformed hccn.conf or hccn_tool answer."""


@dataclass
class HccnDevice:
    device_id: int
    address: Optional[str] = None
    netmask: Optional[str] = None
    netdetect: Optional[str] = None
    gateway: Optional[str] = None
    extra: Dict[str, str] = field(default_factory=dict)   # other keys (bitmap, dscp_tc, ...): first value
    lines: Dict[str, int] = field(default_factory=dict)   # key -> line number, for messages
    repeated: Dict[str, List[str]] = field(default_factory=dict)   # keys given on several lines: every value


_OCTET = r"(?:25[0-5]|2[0-4][0-9]|[01]?[0-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")


def check_ipv4(text: str) -> Optional[str]:
    """None when ``text`` is a dotted-quad IPv4 address, else a message saying what is wrong."""
    if _IPV4.fullmatch(text):
        return None
    parts = text.split(".")
    if len(parts) == 4 and all(p.isdigit() and p.isascii() and len(p) <= 3 for p in parts):
        return f"{text!r} is not an IPv4 address (a part is above 255)"
    return f"{text!r} is not an IPv4 address (like 192.168.100.101)"


def parse_hccn_conf(text: str, source: str = DEFAULT_HCCN_CONF) -> Dict[int, HccnDevice]:
    if not isinstance(text, str):
        raise HccnError("expected the text of an hccn.conf", source)
    out: Dict[int, HccnDevice] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise HccnError(f"expected KEY_N=VALUE (like address_0=192.168.100.101), got {_short(line)}",
                            source, lineno)
        m = _LINE.match(line)
        if not m:
            raise HccnError(f"expected KEY_N=VALUE with N the device id (like address_0=...), got {_short(line)}",
                            source, lineno)
        key, dev_text, value = m.group(1), m.group(2), m.group(3)
        if not (dev_text.isdigit() and dev_text.isascii()):
            raise HccnError(f"device id {dev_text!r} in {key}_{dev_text} is not a number", source, lineno)
        dev = int(dev_text)
        if not value:
            raise HccnError(f"{key}_{dev} has no value", source, lineno)
        entry = out.setdefault(dev, HccnDevice(device_id=dev))
        if key in entry.lines and key in IP_KEYS:
            raise HccnError(f"{key}_{dev} given twice (first on line {entry.lines[key]})", source, lineno)
        if key in entry.lines:         # e.g. A3's arp_N lines: one static ARP entry per peer
            entry.repeated.setdefault(key, [entry.extra[key]]).append(value)
            continue
        entry.lines[key] = lineno
        if key in IP_KEYS:
            err = check_ipv4(value)
            if err:
                raise HccnError(f"{key}_{dev}: {err}", source, lineno)
            setattr(entry, key, value)
        else:
            entry.extra[key] = value
    return out


def read_hccn_conf(path: str = DEFAULT_HCCN_CONF) -> Dict[int, HccnDevice]:
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError as exc:
        raise HccnError(f"cannot read hccn.conf: {exc.strerror or exc}", str(path)) from None
    return parse_hccn_conf(text, source=str(path))


def device_ips(entries: Dict[int, HccnDevice]) -> Dict[int, str]:
    return {d: e.address for d, e in sorted(entries.items()) if e.address}


def parse_hccn_tool_ip(text: str, source: str = "hccn_tool -ip -g") -> Tuple[str, Optional[str]]:
    """``ipaddr:29.1.112.213`` / ``netmask:255.255.0.0`` -> (ip, netmask)."""
    if not isinstance(text, str):
        raise HccnError("expected the output of hccn_tool", source)
    ip = mask = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        key, sep, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if not sep:
            continue  # banners and warnings
        if key == "ipaddr":
            err = check_ipv4(value)
            if err:
                raise HccnError(f"ipaddr: {err}", source, lineno)
            ip = value
        elif key == "netmask":
            err = check_ipv4(value)
            if err:
                raise HccnError(f"netmask: {err}", source, lineno)
            mask = value
    if ip is None:
        raise HccnError("no `ipaddr:` line in hccn_tool output (is the device's NIC IP set?)", source)
    return ip, mask


def query_hccn_tool(device_ids: Iterable[int], timeout: float = 5.0) -> Optional[Dict[int, str]]:
    """Ask ``hccn_tool -i N -ip -g`` for each device; None when hccn_tool is not installed."""
    exe = shutil.which("hccn_tool")
    if not exe:
        return None
    out: Dict[int, str] = {}
    for dev in device_ids:
        try:
            proc = subprocess.run([exe, "-i", str(int(dev)), "-ip", "-g"], capture_output=True,
                                  text=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if proc.returncode != 0:
            continue
        try:
            out[int(dev)] = parse_hccn_tool_ip(proc.stdout, source=f"hccn_tool -i {dev} -ip -g")[0]
        except HccnError:
            continue
    return out or None


def _short(line: str, n: int = 60) -> str:
    return repr(line if len(line) <= n else line[:n] + "...")
