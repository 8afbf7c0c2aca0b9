"""Accelerators as one interface: what differs between a CPU host and an Ascend server, in one place.

An ``Accelerator`` knows

- ``discover(...)``: the devices of this machine as a ``Server`` (CPU: logical slots; Ascend: chips
  from ``npu-smi info`` / hccn.conf / ``hccn_tool``, with their NIC IPs);
- ``rank_env(env, device)``: the rank environment of a process placed on one of its devices;
- ``default_mode``: how ranks find each other when the user does not say (``dynamic``: MindSpore's
  scheduler; ``ranktable``: an HCCL rank table);
- ``health_reader()``: a function returning the devices' health readings for the metrics exporter
  (Ascend: the parsed ``npu-smi info`` chips), or None where there is nothing to read.

``resolve(backend)`` is the only place ``auto`` is decided; ``get(name)`` looks one up by name.
``gpu`` is refused: discovering GPUs as CPU slots would start ranks that do not use them.

Discovery from texts (``ascend_server``) is separate from reading this machine (``discover_local``), so
that the multi-host launcher can build a remote server from the texts it fetched over SSH.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import replace
from typing import Any, Callable, ClassVar, Dict, Iterable, List, Mapping, Optional, Sequence

from cluster.contracts.env import RankEnv
from cluster.devices import MAX_ID, Device, DeviceListError, Server, default_server_id, parse_visible_devices
from cluster.errors import ClusterInputError
from cluster import hccn

#: What ``--backend`` accepts.
BACKEND_CHOICES = ("auto", "cpu", "ascend", "gpu")


class Accelerator:
    name: ClassVar[str] = ""
    default_mode: ClassVar[str] = "dynamic"

    def discover(self, *, devices: Any = None, server_id: Optional[str] = None, **inputs: Any) -> Server:
        raise NotImplementedError

    def rank_env(self, env: RankEnv, device: Optional[int]) -> RankEnv:
        """``env`` for a process on ``device`` (None: the process uses no device, e.g. the scheduler)."""
        return env.with_(device_id=device, backend=self.name)

    def health_reader(self) -> Optional[Callable[[], Any]]:
        return None


class Cpu(Accelerator):
    """Logical slots 0..N-1: ``DEVICE_ID`` is the slot; ranks join through MindSpore's scheduler."""
    name = "cpu"
    default_mode = "dynamic"

    def discover(self, *, devices: Any = None, server_id: Optional[str] = None, cpu_count: Optional[int] = None,
                 **_: Any) -> Server:
        return cpu_server(cpu_count, server_id=server_id or default_server_id(), visible=devices)


class Ascend(Accelerator):
    """Ascend chips: ``DEVICE_ID`` is the physical id; ranks join through an HCCL rank table."""
    name = "ascend"
    default_mode = "ranktable"

    def discover(self, *, devices: Any = None, server_id: Optional[str] = None, hccn_conf: Optional[str] = None,
                 npu_smi: Optional[str] = None, ips: Optional[Mapping[int, str]] = None,
                 use_hccn_tool: bool = True, npu_smi_text: Optional[str] = None, host_ip: Optional[str] = None,
                 super_pod_id: Optional[str] = None, super_device_ids: Optional[Mapping[int, int]] = None,
                 **_: Any) -> Server:
        from cluster import npu_smi as smi

        sid = server_id or default_server_id()
        conf_src = hccn_conf or hccn.DEFAULT_HCCN_CONF
        conf_text = None
        if hccn_conf or (not ips and os.path.exists(hccn.DEFAULT_HCCN_CONF)):
            conf_text = read_text(conf_src, "hccn.conf")
        if npu_smi_text is not None:
            smi_text: Optional[str] = npu_smi_text
        else:
            smi_text = read_text(npu_smi, "npu-smi table") if npu_smi else smi.run_npu_smi()
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

    def health_reader(self) -> Optional[Callable[[], Any]]:
        """``read_npu_smi`` where npu-smi is installed (chips with health, temperature, power, memory)."""
        if shutil.which("npu-smi") is None:
            return None
        from cluster.npu_smi import read_npu_smi
        return read_npu_smi


class Gpu(Accelerator):
    name = "gpu"

    def discover(self, **_: Any) -> Server:
        raise ClusterInputError(
            "GPUs are not supported: pspnet-cluster cannot discover them, and running GPU ranks as CPU slots "
            "would leave the GPUs unused; use --backend cpu (or ascend)", "--backend gpu")


ACCELERATORS: Dict[str, Accelerator] = {a.name: a for a in (Cpu(), Ascend(), Gpu())}


def get(name: str) -> Accelerator:
    """The accelerator called ``name`` (not ``auto``: see ``resolve``); ``gpu`` is refused here."""
    acc = ACCELERATORS.get(str(name).lower())
    if acc is None:
        raise ClusterInputError(f"unknown backend {name!r}; use {', '.join(BACKEND_CHOICES)}", "--backend")
    if isinstance(acc, Gpu):
        acc.discover()
    return acc


def resolve(backend: Optional[str] = "auto", *, hccn_conf: Optional[str] = None, npu_smi: Optional[str] = None,
            ips: Optional[Mapping[int, str]] = None, servers: Optional[Sequence[Server]] = None) -> Accelerator:
    """The accelerator a job uses.  ``auto`` is Ascend when Ascend inputs are given (hccn.conf, an npu-smi
    table, device IPs), when discovery found Ascend devices on ``servers`` (NIC IPs or NPU ids), or,
    without ``servers``, when this machine has npu-smi, hccn_tool or /etc/hccn.conf; else CPU."""
    b = (backend or "auto").lower()
    if b != "auto":
        return get(b)
    if hccn_conf or npu_smi or ips:
        return ACCELERATORS["ascend"]
    if servers is not None:
        return ACCELERATORS["ascend" if any(_is_ascend(d) for s in servers for d in s.devices) else "cpu"]
    if shutil.which("npu-smi") or shutil.which("hccn_tool") or os.path.exists(hccn.DEFAULT_HCCN_CONF):
        return ACCELERATORS["ascend"]
    return ACCELERATORS["cpu"]


def _is_ascend(device: Device) -> bool:
    """A device Ascend discovery found (npu-smi gives its NPU id, hccn.conf/hccn_tool its NIC IP); a CPU
    slot has neither."""
    return device.ip is not None or device.npu_id is not None


def discover_local(backend: str = "auto", *, devices: Any = None, hccn_conf: Optional[str] = None,
                   npu_smi: Optional[str] = None, ips: Optional[Mapping[int, str]] = None, **inputs: Any) -> Server:
    """This machine's devices for ``backend`` (``auto`` resolved by ``resolve``).

    ``hccn_conf``/``npu_smi``: files to read instead of ``/etc/hccn.conf`` / running ``npu-smi info``.
    ``devices``: the visible-device spec (``8``, ``0-3``).  ``inputs``: ``server_id``, ``cpu_count``,
    ``use_hccn_tool``, ``npu_smi_text`` (a table already read, so a caller that also wants the health
    fields runs npu-smi once), and the rank table 1.2 settings ``host_ip``, ``super_pod_id``,
    ``super_device_ids``.
    """
    acc = resolve(backend, hccn_conf=hccn_conf, npu_smi=npu_smi, ips=ips)
    return acc.discover(devices=devices, hccn_conf=hccn_conf, npu_smi=npu_smi, ips=ips, **inputs)


# ------------------------------------------------------------------ servers from what was read

def cpu_server(count: Optional[int] = None, server_id: str = "127.0.0.1", visible: Any = None) -> Server:
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
                  visible: Any = None, hccn_source: str = hccn.DEFAULT_HCCN_CONF,
                  npu_smi_source: str = "npu-smi info", host: Optional[str] = None,
                  host_ip: Optional[str] = None, super_pod_id: Optional[str] = None,
                  super_device_ids: Optional[Mapping[int, int]] = None) -> Server:
    """One Ascend server from the texts of its hccn.conf / npu-smi table / explicit IPs.

    Device ids come from npu-smi when given (the devices that exist), else from hccn.conf, else
    from ``ips``.  IPs: ``ips`` first, then hccn.conf.  A device without an IP keeps ``ip=None``;
    the rank-table writer rejects it with a clear message.
    """
    from cluster import npu_smi

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
    devices: List[Device] = []
    for k, i in enumerate(chosen):
        ip = (ips or {}).get(i) or conf_ips.get(i) or base[i].ip
        sdid = (super_device_ids or {}).get(i, base[i].super_device_id)
        logical = base[i].logical_id if base[i].logical_id is not None else ids.index(i)
        devices.append(replace(base[i], ip=ip, super_device_id=sdid, logical_id=logical))
    return Server(server_id=server_id, devices=tuple(devices), host=host, host_ip=host_ip,
                  super_pod_id=super_pod_id, card_rules=card_rules)


def read_text(path: str, what: str) -> str:
    """A local input file's text; ClusterInputError naming the file when it cannot be read."""
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError as exc:
        raise ClusterInputError(f"cannot read {what}: {exc.strerror or exc}", path) from None
