"""HCCL rank tables: write (format 1.0 and 1.2), validate, load.

Format 1.0, structurally what the MindSpore model zoo's ``hccl_tools.py`` / ``merge_hccl.py`` write
(same keys, same key order, 4-space indent; unlike merge_hccl every value is a string)::

    {"version": "1.0", "server_count": "1",
     "server_list": [{"server_id": "10.0.0.1",
                      "device": [{"device_id": "0", "device_ip": "192.168.100.101", "rank_id": "0"}, ...],
                      "host_nic_ip": "reserve"}],
     "status": "completed"}

Format 1.2 (Atlas A3 / Atlas 900 A3 SuperPoD, as HCCL documents it): device entries carry
``super_device_id``; a server entry may carry ``host_ip``; ``super_pod_list`` groups servers by
``super_pod_id``::

    {"version": "1.2", "server_count": "1",
     "server_list": [{"server_id": "node_0", "host_ip": "172.16.0.100",
                      "device": [{"device_id": "0", "device_ip": "...", "super_device_id": "0", "rank_id": "0"}]}],
     "super_pod_list": [{"super_pod_id": "0", "server_list": [{"server_id": "node_0"}]}],
     "status": "completed"}

Rank ids are given in order: servers in the order passed, devices in each server's order.

Public API:

``build_rank_table(servers, version="1.0", rules="auto") -> dict``: validate, then build.
``validate_servers(servers, version="1.0", rules="auto", source="rank table")``: raises ``RankTableError``:
  no servers, a server without devices, duplicate server ids, duplicate device ids on a server,
  a device without an IP, duplicate device IPs anywhere, servers with different device counts,
  card rules (``rules``: ``"910"`` 1/2/4/8 cards per server, ids 0-7, a 2- or 4-card set within 0-3
  or within 4-7; ``"a3"`` 1 or an even count up to 16, ids 0-15, even counts in whole chip pairs
  (2k, 2k+1); ``"none"``; ``"auto"`` = 910 for 1.0, a3 for 1.2); for 1.2 a missing or duplicate
  (within a super pod) ``super_device_id``.
``rank_table_json(table) -> str``; ``write_rank_table(path, table)`` (atomic).
``validate_rank_table(table, source="rank table", rules="auto") -> list[RankSlot]``: checks an existing
  table (every value a string, counts, rank ids 0..N-1 each once, the rules above).
``load_rank_table(path, rules="auto") -> dict``: read + validate a file; errors name the file and the field
  (``rank_table.json: server_list[1].device[3].device_ip: ...``).
``rank_slots(table) -> list[RankSlot]``: one per rank: ``rank_id, server_id, server_index, local_rank,
  device_id, device_ip, super_device_id`` (what the orchestrator puts into RANK_ID / DEVICE_ID).
``servers_from_table(table) -> list[Server]``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from cluster.devices import ClusterInputError, Device, Server
from cluster.hccn import check_ipv4

FORMATS = ("1.0", "1.2")
RULES = ("auto", "910", "a3", "none")


class RankTableError(ClusterInputError):
    """A rank table (or the servers for one) that HCCL would reject or that is not what was meant."""


@dataclass(frozen=True)
class RankSlot:
    rank_id: int
    server_id: str
    server_index: int
    local_rank: int
    device_id: int
    device_ip: str
    super_device_id: Optional[int] = None


def _rules_for(version: str, rules: str) -> str:
    if rules not in RULES:
        raise RankTableError(f"unknown card rules {rules!r}; use one of {', '.join(RULES)}", "--rules")
    if rules == "auto":
        return "a3" if version == "1.2" else "910"
    return rules


def _where(i: int, server: Server) -> str:
    return f"server_list[{i}] (server {server.server_id})"


def validate_servers(servers: Sequence[Server], version: str = "1.0", rules: str = "auto",
                     source: str = "rank table") -> None:
    if version not in FORMATS:
        raise RankTableError(f"unknown rank table format {version!r}; use 1.0 or 1.2", source)
    rules = _rules_for(version, rules)
    servers = list(servers)
    if not servers:
        raise RankTableError("no servers", source)
    seen_server: Dict[str, int] = {}
    seen_ip: Dict[str, str] = {}
    seen_sdid: Dict[tuple, str] = {}
    count0 = len(servers[0].devices)
    for i, s in enumerate(servers):
        where = _where(i, s)
        if not isinstance(s.server_id, str) or not s.server_id.strip():
            raise RankTableError(f"server_list[{i}]: empty server_id", source)
        if s.server_id in seen_server:
            raise RankTableError(f"{where}: server_id also used by server_list[{seen_server[s.server_id]}]",
                                 source)
        seen_server[s.server_id] = i
        if not s.devices:
            raise RankTableError(f"{where}: no devices", source)
        if len(s.devices) != count0:
            raise RankTableError(
                f"{where}: has {len(s.devices)} devices but server_list[0] (server {servers[0].server_id}) "
                f"has {count0}; every server of a job must use the same number of devices", source)
        if version == "1.2" and s.host_ip is not None:
            err = check_ipv4(str(s.host_ip))
            if err:
                raise RankTableError(f"{where}: host_ip: {err}", source)
        ids: Dict[int, int] = {}
        for j, d in enumerate(s.devices):
            dwhere = f"{where} device[{j}] (device {d.device_id})"
            if not isinstance(d.device_id, int) or isinstance(d.device_id, bool) or d.device_id < 0:
                raise RankTableError(f"{dwhere}: device_id must be a non-negative integer", source)
            if d.device_id in ids:
                raise RankTableError(f"{where}: device {d.device_id} listed twice (device[{ids[d.device_id]}] "
                                     f"and device[{j}])", source)
            ids[d.device_id] = j
            if not d.ip:
                raise RankTableError(
                    f"{dwhere}: no device IP; give it in hccn.conf (address_{d.device_id}=...), "
                    f"through hccn_tool, or explicitly (--ips)", source)
            err = check_ipv4(str(d.ip))
            if err:
                raise RankTableError(f"{dwhere}: device_ip: {err}", source)
            if d.ip in seen_ip:
                raise RankTableError(f"{dwhere}: device_ip {d.ip} already used by {seen_ip[d.ip]}", source)
            seen_ip[d.ip] = f"server {s.server_id} device {d.device_id}"
            if version == "1.2":
                if d.super_device_id is None:
                    raise RankTableError(
                        f"{dwhere}: no super_device_id (format 1.2 needs it: `npu-smi info -t spod-info "
                        f"-i NPU -c CHIP` shows it as SDID; give it with --super-device-ids or in the hosts "
                        f"file)", source)
                if not isinstance(d.super_device_id, int) or d.super_device_id < 0:
                    raise RankTableError(f"{dwhere}: super_device_id must be a non-negative integer", source)
                key = (s.super_pod_id or "0", d.super_device_id)
                if key in seen_sdid:
                    raise RankTableError(f"{dwhere}: super_device_id {d.super_device_id} already used by "
                                         f"{seen_sdid[key]} in super pod {key[0]}", source)
                seen_sdid[key] = f"server {s.server_id} device {d.device_id}"
        _check_card_rules(where, sorted(ids), rules, source)


def _check_card_rules(where: str, ids: List[int], rules: str, source: str) -> None:
    n = len(ids)
    if rules == "910":
        bad = [i for i in ids if i > 7]
        if bad:
            raise RankTableError(f"{where}: device id {bad[0]} is outside 0-7 (910-class servers have 8 "
                                 f"cards; use --rules none for other hardware)", source)
        if n not in (1, 2, 4, 8):
            raise RankTableError(f"{where}: {n} devices; a 910-class server takes 1, 2, 4 or 8 cards per job",
                                 source)
        if n in (2, 4) and not (all(i <= 3 for i in ids) or all(i >= 4 for i in ids)):
            raise RankTableError(
                f"{where}: devices {','.join(map(str, ids))} span cards 0-3 and 4-7; a {n}-card job must "
                f"stay within 0-3 or within 4-7", source)
    elif rules == "a3":
        bad = [i for i in ids if i > 15]
        if bad:
            raise RankTableError(f"{where}: device id {bad[0]} is outside 0-15 (A3 servers have 16 devices; "
                                 f"use --rules none for other hardware)", source)
        if not (n == 1 or (n % 2 == 0 and n <= 16)):
            raise RankTableError(f"{where}: {n} devices; an A3 server takes 1 or an even number up to 16",
                                 source)
        if n > 1:
            have = set(ids)
            lone = [i for i in ids if (i ^ 1) not in have]
            if lone:
                raise RankTableError(
                    f"{where}: device {lone[0]} without its pair {lone[0] ^ 1}; an even count of A3 devices "
                    f"must use both chips of each NPU (0-1, 2-3, ...)", source)


def build_rank_table(servers: Sequence[Server], version: str = "1.0", rules: str = "auto") -> Dict[str, Any]:
    """Validate ``servers`` and return the rank table (plain dict, keys in HCCL's order)."""
    servers = list(servers)
    validate_servers(servers, version, rules)
    server_list: List[Dict[str, Any]] = []
    rank = 0
    for s in servers:
        devices = []
        for d in s.devices:
            if version == "1.2":
                entry = {"device_id": str(d.device_id), "device_ip": str(d.ip),
                         "super_device_id": str(d.super_device_id), "rank_id": str(rank)}
            else:
                entry = {"device_id": str(d.device_id), "device_ip": str(d.ip), "rank_id": str(rank)}
            devices.append(entry)
            rank += 1
        if version == "1.2":
            item: Dict[str, Any] = {"server_id": s.server_id}
            if s.host_ip:
                item["host_ip"] = str(s.host_ip)
            item["device"] = devices
        else:
            item = {"server_id": s.server_id, "device": devices, "host_nic_ip": "reserve"}
        server_list.append(item)
    table: Dict[str, Any] = {"version": version, "server_count": str(len(servers)), "server_list": server_list}
    if version == "1.2":
        pods: Dict[str, List[Dict[str, str]]] = {}
        for s in servers:
            pods.setdefault(str(s.super_pod_id or "0"), []).append({"server_id": s.server_id})
        table["super_pod_list"] = [{"super_pod_id": pid, "server_list": lst} for pid, lst in pods.items()]
    table["status"] = "completed"
    return table


def rank_table_json(table: Dict[str, Any]) -> str:
    return json.dumps(table, indent=4) + "\n"


def write_rank_table(path: Any, table: Dict[str, Any]) -> None:
    from cluster.jobdir import atomic_write_bytes

    atomic_write_bytes(path, rank_table_json(table).encode("utf-8"))


# ------------------------------------------------------------------ reading existing tables

def _need(obj: Dict[str, Any], key: str, where: str, source: str) -> Any:
    if key not in obj:
        raise RankTableError(f"{where}: missing field {key!r}", source)
    return obj[key]


def _str(obj: Dict[str, Any], key: str, where: str, source: str) -> str:
    val = _need(obj, key, where, source)
    if not isinstance(val, str):
        raise RankTableError(f"{where}.{key}: must be a string (HCCL wants \"{val}\"), got {type(val).__name__}"
                             if isinstance(val, (int, float)) and not isinstance(val, bool)
                             else f"{where}.{key}: must be a string, got {type(val).__name__}", source)
    return val


def _int_str(obj: Dict[str, Any], key: str, where: str, source: str) -> int:
    val = _str(obj, key, where, source)
    if not (val.isdigit() and val.isascii()):
        raise RankTableError(f"{where}.{key}: {val!r} is not a non-negative integer", source)
    return int(val)


def _parse_table(table: Any, source: str):
    """-> (version, servers, rank ids per device in order)."""
    if not isinstance(table, dict):
        raise RankTableError("a rank table is a JSON object", source)
    version = _str(table, "version", "rank table", source)
    if version not in FORMATS:
        raise RankTableError(f"version: {version!r} is not a format this tool knows (1.0, 1.2)", source)
    status = _str(table, "status", "rank table", source)
    if status != "completed":
        raise RankTableError(f"status: {status!r}; HCCL only uses a table whose status is \"completed\"", source)
    count = _int_str(table, "server_count", "rank table", source)
    slist = _need(table, "server_list", "rank table", source)
    if not isinstance(slist, list):
        raise RankTableError("server_list: must be a list", source)
    if count != len(slist):
        raise RankTableError(f"server_count: says {count} but server_list has {len(slist)} servers", source)
    pod_of: Dict[str, str] = {}
    if version == "1.2":
        pods = _need(table, "super_pod_list", "rank table", source)
        if not isinstance(pods, list):
            raise RankTableError("super_pod_list: must be a list", source)
        for k, pod in enumerate(pods):
            pw = f"super_pod_list[{k}]"
            if not isinstance(pod, dict):
                raise RankTableError(f"{pw}: must be an object", source)
            pid = _str(pod, "super_pod_id", pw, source)
            members = _need(pod, "server_list", pw, source)
            if not isinstance(members, list):
                raise RankTableError(f"{pw}.server_list: must be a list", source)
            for m, mem in enumerate(members):
                if not isinstance(mem, dict):
                    raise RankTableError(f"{pw}.server_list[{m}]: must be an object", source)
                sid = _str(mem, "server_id", f"{pw}.server_list[{m}]", source)
                if sid in pod_of:
                    raise RankTableError(f"{pw}.server_list[{m}]: server {sid} is already in super pod "
                                         f"{pod_of[sid]}", source)
                pod_of[sid] = pid
    servers: List[Server] = []
    ranks: List[int] = []
    for i, s in enumerate(slist):
        where = f"server_list[{i}]"
        if not isinstance(s, dict):
            raise RankTableError(f"{where}: must be an object", source)
        sid = _str(s, "server_id", where, source)
        host_ip = _str(s, "host_ip", where, source) if "host_ip" in s else None
        if version == "1.0" and "host_nic_ip" in s:
            _str(s, "host_nic_ip", where, source)
        devs = _need(s, "device", where, source)
        if not isinstance(devs, list):
            raise RankTableError(f"{where}.device: must be a list", source)
        devices = []
        for j, d in enumerate(devs):
            dw = f"{where}.device[{j}]"
            if not isinstance(d, dict):
                raise RankTableError(f"{dw}: must be an object", source)
            dev_id = _int_str(d, "device_id", dw, source)
            ip = _str(d, "device_ip", dw, source)
            err = check_ipv4(ip)
            if err:
                raise RankTableError(f"{dw}.device_ip: {err}", source)
            sdid = _int_str(d, "super_device_id", dw, source) if (version == "1.2" or "super_device_id" in d) \
                else None
            ranks.append(_int_str(d, "rank_id", dw, source))
            devices.append(Device(device_id=dev_id, ip=ip, super_device_id=sdid))
        if version == "1.2" and sid not in pod_of:
            raise RankTableError(f"{where}: server {sid} is in no super_pod_list entry", source)
        servers.append(Server(server_id=sid, devices=tuple(devices), host_ip=host_ip,
                              super_pod_id=pod_of.get(sid)))
    if version == "1.2":
        known = {s.server_id for s in servers}
        extra = [sid for sid in pod_of if sid not in known]
        if extra:
            raise RankTableError(f"super_pod_list: server {extra[0]} is not in server_list", source)
    return version, servers, ranks


def validate_rank_table(table: Any, source: str = "rank table", rules: str = "auto") -> List[RankSlot]:
    version, servers, ranks = _parse_table(table, source)
    validate_servers(servers, version, rules, source)
    seen: Dict[int, int] = {}
    for k, r in enumerate(ranks):
        if r in seen:
            raise RankTableError(f"rank_id {r} given to two devices (ranks #{seen[r]} and #{k} in order)", source)
        seen[r] = k
    missing = sorted(set(range(len(ranks))) - set(ranks))
    if missing:
        raise RankTableError(f"rank ids must be 0..{len(ranks) - 1}; rank_id {missing[0]} is missing", source)
    return _slots(servers, ranks)


def _slots(servers: Sequence[Server], ranks: Sequence[int]) -> List[RankSlot]:
    out: List[RankSlot] = []
    k = 0
    for si, s in enumerate(servers):
        for local, d in enumerate(s.devices):
            out.append(RankSlot(rank_id=ranks[k], server_id=s.server_id, server_index=si, local_rank=local,
                                device_id=d.device_id, device_ip=str(d.ip), super_device_id=d.super_device_id))
            k += 1
    out.sort(key=lambda slot: slot.rank_id)
    return out


def rank_slots(table: Dict[str, Any]) -> List[RankSlot]:
    """One slot per rank, sorted by rank id (the table is validated first, without card rules)."""
    return validate_rank_table(table, rules="none")


def servers_from_table(table: Dict[str, Any]) -> List[Server]:
    return _parse_table(table, "rank table")[1]


def load_rank_table(path: Any, rules: str = "auto") -> Dict[str, Any]:
    source = str(path)
    try:
        with open(path, "r", encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise RankTableError(f"cannot read rank table: {exc.strerror or exc}", source) from None
    except UnicodeDecodeError:
        raise RankTableError("not a UTF-8 text file", source) from None
    try:
        table = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RankTableError(f"not valid JSON: {exc.msg} (column {exc.colno})", source, exc.lineno) from None
    validate_rank_table(table, source, rules)
    return table
