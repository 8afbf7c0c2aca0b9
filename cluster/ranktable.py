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
import re
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

from cluster.errors import ClusterInputError
from cluster.devices import Device, Server
from cluster.hccn import _IPV4, check_ipv4

_IP_OK = _IPV4.fullmatch
_DIGITS = re.compile(r"[0-9]+").fullmatch

FORMATS = ("1.0", "1.2")
RULES = ("auto", "910", "a3", "none")


class RankTableError(ClusterInputError):
    """A rank table (or the servers for one) that HCCL would reject or that is not what was meant."""


class RankSlot(NamedTuple):
    """One rank of a table (a named tuple: cheap to build 4096 of)."""
    rank_id: int
    server_id: str
    server_index: int
    local_rank: int
    device_id: int
    device_ip: str
    super_device_id: Optional[int] = None


def _rules_for(version: str, rules: str, hint: Optional[str] = None) -> str:
    """The card rules to apply: ``rules`` unless ``auto``; then what the hardware showed (``hint``:
    ``a3`` when npu-smi lists two chips per NPU), else a3 for format 1.2 and 910 for 1.0."""
    if rules not in RULES:
        raise RankTableError(f"unknown card rules {rules!r}; use one of {', '.join(RULES)}", "--rules")
    if rules == "auto":
        if hint in ("910", "a3"):
            return hint
        return "a3" if version == "1.2" else "910"
    return rules


def _table_hint(rows: List["_Row"]) -> Optional[str]:
    """An existing table names no hardware; a server with more than 8 devices or ids above 7 can only
    be an A3 one (910-class servers have 8 cards)."""
    for _sid, _hip, _pod, devices in rows:
        if len(devices) > 8 or any(type(d[0]) is int and d[0] > 7 for d in devices):
            return "a3"
    return None


# A server as the validator sees it: (server_id, host_ip, super_pod_id, [(device_id, device_ip, super_device_id)])
_Row = tuple


def _rows(servers: Sequence[Server]) -> List[_Row]:
    return [(s.server_id, s.host_ip, s.super_pod_id, [(d.device_id, d.ip, d.super_device_id) for d in s.devices])
            for s in servers]


def hardware_rules(servers: Sequence[Server]) -> Optional[str]:
    """The card rules the servers' hardware implies (``Server.card_rules``), None when unknown."""
    hints = {getattr(s, "card_rules", None) for s in servers} - {None}
    return hints.pop() if len(hints) == 1 else None


def super_pod_mode(servers: Sequence[Server]) -> bool:
    """HCCL's super-pod mode: a super pod id or a super_device_id was given for some server."""
    return any(s.super_pod_id is not None or any(d.super_device_id is not None for d in s.devices)
               for s in servers)


def validate_servers(servers: Sequence[Server], version: str = "1.0", rules: str = "auto",
                     source: str = "rank table") -> None:
    _validate_rows(_rows(servers), version, rules, source, hint=hardware_rules(servers),
                   pod_mode=super_pod_mode(servers))


def _validate_rows(rows: List[_Row], version: str, rules: str, source: str, hint: Optional[str] = None,
                   pod_mode: bool = True, ip_optional: bool = False) -> None:
    """``pod_mode``: format 1.2 in super-pod mode (every device needs a super_device_id);
    ``ip_optional``: device IPs may be absent (an existing one-server table)."""
    if version not in FORMATS:
        raise RankTableError(f"unknown rank table format {version!r}; use 1.0 or 1.2", source)
    rules = _rules_for(version, rules, hint)
    if not rows:
        raise RankTableError("no servers", source)
    seen_server: Dict[str, int] = {}
    seen_ip: Dict[str, tuple] = {}
    seen_sdid: Dict[tuple, tuple] = {}
    count0 = len(rows[0][3])
    is_12 = version == "1.2"
    for i, (sid, host_ip, pod, devices) in enumerate(rows):
        if not isinstance(sid, str) or not sid.strip():
            raise RankTableError(f"server_list[{i}]: empty server_id", source)
        where = f"server_list[{i}] (server {sid})"
        if sid in seen_server:
            raise RankTableError(f"{where}: server_id also used by server_list[{seen_server[sid]}]", source)
        seen_server[sid] = i
        if not devices:
            raise RankTableError(f"{where}: no devices", source)
        if len(devices) != count0:
            raise RankTableError(
                f"{where}: has {len(devices)} devices but server_list[0] (server {rows[0][0]}) "
                f"has {count0}; every server of a job must use the same number of devices", source)
        if is_12 and host_ip is not None:
            err = check_ipv4(str(host_ip))
            if err:
                raise RankTableError(f"{where}: host_ip: {err}", source)
        ids: Dict[int, int] = {}
        for j, (dev, ip, sdid) in enumerate(devices):
            if type(dev) is not int or dev < 0:
                raise RankTableError(f"{where} device[{j}] (device {dev}): device_id must be a non-negative "
                                     f"integer", source)
            if dev in ids:
                raise RankTableError(f"{where}: device {dev} listed twice (device[{ids[dev]}] and device[{j}])",
                                     source)
            ids[dev] = j
            if not ip and ip_optional:
                pass
            elif not ip:
                raise RankTableError(
                    f"{where} device[{j}] (device {dev}): no device IP; give it in hccn.conf (address_{dev}=...), "
                    f"through hccn_tool, or explicitly (--ips)", source)
            elif type(ip) is not str or not _IP_OK(ip):
                raise RankTableError(f"{where} device[{j}] (device {dev}): device_ip: {check_ipv4(str(ip))}",
                                     source)
            if ip and ip in seen_ip:
                other = seen_ip[ip]
                raise RankTableError(f"{where} device[{j}] (device {dev}): device_ip {ip} already used by "
                                     f"server {other[0]} device {other[1]}", source)
            if ip:
                seen_ip[ip] = (sid, dev)
            if is_12 and (pod_mode or sdid is not None):
                if sdid is None:
                    raise RankTableError(
                        f"{where} device[{j}] (device {dev}): no super_device_id (super-pod mode needs one "
                        f"for every device: `npu-smi info -t spod-info -i NPU -c CHIP` shows it as SDID; give "
                        f"it with --super-device-ids or in the hosts file, or drop the super pod settings "
                        f"to write a 1.2 table without them)", source)
                if type(sdid) is not int or sdid < 0:
                    raise RankTableError(f"{where} device[{j}] (device {dev}): super_device_id must be a "
                                         f"non-negative integer", source)
                key = (pod or "0", sdid)
                if key in seen_sdid:
                    other = seen_sdid[key]
                    raise RankTableError(f"{where} device[{j}] (device {dev}): super_device_id {sdid} already "
                                         f"used by server {other[0]} device {other[1]} in super pod {key[0]}",
                                         source)
                seen_sdid[key] = (sid, dev)
        _check_card_rules(where, sorted(ids), rules, source)


def _check_card_rules(where: str, ids: List[int], rules: str, source: str) -> None:
    n = len(ids)
    if rules == "910":
        bad = [i for i in ids if i > 7]
        if bad:
            raise RankTableError(f"{where}: device id {bad[0]} is outside 0-7 (910-class servers have 8 "
                                 f"cards; use --rules a3 for Atlas A3 servers, --rules none for other "
                                 f"hardware)", source)
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
            if version == "1.2" and d.super_device_id is not None:
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
    if version == "1.2" and super_pod_mode(servers):     # outside super-pod mode HCCL wants no pod list
        pods: Dict[str, List[Dict[str, str]]] = {}
        for s in servers:
            pods.setdefault(str(s.super_pod_id or "0"), []).append({"server_id": s.server_id})
        table["super_pod_list"] = [{"super_pod_id": pid, "server_list": lst} for pid, lst in pods.items()]
    table["status"] = "completed"
    return table


def rank_table_json(table: Dict[str, Any]) -> str:
    """The table as JSON text, byte for byte what ``json.dumps(table, indent=4)`` gives (the layout
    hccl_tools writes) plus a newline; written directly because the json module's indented encoder is
    pure Python and several times slower on a 4096-rank table."""
    parts: List[str] = []
    _emit(table, "\n", parts)
    parts.append("\n")
    return "".join(parts)


_q = json.encoder.encode_basestring_ascii   # what json.dumps uses for strings (ensure_ascii=True)


def _emit(obj: Any, nl: str, out: List[str]) -> None:
    if type(obj) is str:
        out.append(_q(obj))
    elif isinstance(obj, dict):
        if not obj:
            out.append("{}")
            return
        inner = nl + "    "
        if all(type(v) is str for v in obj.values()) and all(type(k) is str for k in obj):
            out.append("{" + inner + ("," + inner).join(_q(k) + ": " + _q(v) for k, v in obj.items()) + nl + "}")
            return
        out.append("{")
        first = True
        for k, v in obj.items():
            out.append(inner if first else "," + inner)
            first = False
            out.append(json.dumps(k if isinstance(k, str) else str(k)) + ": ")
            _emit(v, inner, out)
        out.append(nl + "}")
    elif isinstance(obj, (list, tuple)):
        if not obj:
            out.append("[]")
            return
        inner = nl + "    "
        out.append("[")
        first = True
        for v in obj:
            out.append(inner if first else "," + inner)
            first = False
            _emit(v, inner, out)
        out.append(nl + "]")
    else:
        out.append(json.dumps(obj))


def write_rank_table(path: Any, table: Dict[str, Any]) -> None:
    from cluster.contracts.jobdir import atomic_write_bytes

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
    """-> (version, rows, rank ids per device in order); checks fields and types only."""
    if not isinstance(table, dict):
        raise RankTableError("a rank table is a JSON object", source)
    if "version" not in table and "group_list" in table:
        raise RankTableError(
            "this is the old rank table format (group_list, no version), which current HCCL does not take; "
            "write a format 1.0 table instead: pspnet-cluster ranktable -o rank_table.json "
            "(or --hosts FILE for several servers)", source)
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
    is_12 = version == "1.2"
    pod_of: Dict[str, str] = {}
    pod_mode = is_12 and "super_pod_list" in table     # HCCL's super-pod mode
    one_server = len(slist) == 1                        # device_ip is optional on one server
    if pod_mode:
        pods = table["super_pod_list"]
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
    rows: List[_Row] = []
    ranks: List[int] = []
    for i, s in enumerate(slist):
        where = f"server_list[{i}]"
        if not isinstance(s, dict):
            raise RankTableError(f"{where}: must be an object", source)
        sid = _str(s, "server_id", where, source)
        host_ip = _str(s, "host_ip", where, source) if "host_ip" in s else None
        if "host_nic_ip" in s:
            _str(s, "host_nic_ip", where, source)
        devs = _need(s, "device", where, source)
        if not isinstance(devs, list):
            raise RankTableError(f"{where}.device: must be a list", source)
        devices = []
        for j, d in enumerate(devs):
            if type(d) is dict:
                # the common case, checked without building messages
                dev_s, ip, rank_s = d.get("device_id"), d.get("device_ip"), d.get("rank_id")
                sd_s = d.get("super_device_id")
                if type(dev_s) is str and type(ip) is str and type(rank_s) is str and _DIGITS(dev_s) \
                        and _DIGITS(rank_s) and (sd_s is None if not pod_mode else
                                                 (type(sd_s) is str and _DIGITS(sd_s) is not None)):
                    devices.append((int(dev_s), ip, None if sd_s is None else int(sd_s)))
                    ranks.append(int(rank_s))
                    continue
            dw = f"{where}.device[{j}]"
            if not isinstance(d, dict):
                raise RankTableError(f"{dw}: must be an object", source)
            dev_id = _int_str(d, "device_id", dw, source)
            ip = None if (one_server and "device_ip" not in d) else _str(d, "device_ip", dw, source)
            sdid = _int_str(d, "super_device_id", dw, source) if (pod_mode or "super_device_id" in d) else None
            ranks.append(_rank_id(d, dw, source))
            devices.append((dev_id, ip, sdid))
        if pod_mode and sid not in pod_of:
            raise RankTableError(f"{where}: server {sid} is in no super_pod_list entry", source)
        rows.append((sid, host_ip, pod_of.get(sid), devices))
    if pod_mode:
        known = {r[0] for r in rows}
        extra = [sid for sid in pod_of if sid not in known]
        if extra:
            raise RankTableError(f"super_pod_list: server {extra[0]} is not in server_list", source)
    return version, rows, ranks


def _rank_id(d: Dict[str, Any], where: str, source: str) -> int:
    """A rank id as HCCL's documented string, or as the integer the model zoo's merge_hccl.py writes."""
    val = _need(d, "rank_id", where, source)
    if type(val) is int and val >= 0:
        return val
    return _int_str(d, "rank_id", where, source)


def validate_rank_table(table: Any, source: str = "rank table", rules: str = "auto") -> List[RankSlot]:
    version, rows, ranks = _parse_table(table, source)
    _validate_rows(rows, version, rules, source, hint=_table_hint(rows),
                   pod_mode=version == "1.2" and "super_pod_list" in table, ip_optional=len(rows) == 1)
    n = len(ranks)
    if len(set(ranks)) != n or (n and (min(ranks) != 0 or max(ranks) != n - 1)):
        seen: Dict[int, int] = {}
        for k, r in enumerate(ranks):
            if r in seen:
                raise RankTableError(f"rank_id {r} given to two devices (ranks #{seen[r]} and #{k} in order)",
                                     source)
            seen[r] = k
        missing = sorted(set(range(n)) - set(ranks))
        raise RankTableError(f"rank ids must be 0..{n - 1}; rank_id {missing[0]} is missing", source)
    _check_rank_blocks(rows, ranks, source)
    return _slots(rows, ranks)


def _check_rank_blocks(rows: Sequence[_Row], ranks: Sequence[int], source: str) -> None:
    """HCCL numbers ranks server by server in server_list order: each server holds one consecutive
    block of rank ids, after the previous server's block."""
    k = 0
    for i, (sid, _hip, _pod, devices) in enumerate(rows):
        block = ranks[k:k + len(devices)]
        lo, hi = k, k + len(devices) - 1
        stray = [r for r in block if not lo <= r <= hi]
        if stray:
            raise RankTableError(
                f"server_list[{i}] (server {sid}): rank_id {stray[0]} belongs to another server's block; "
                f"HCCL wants ranks numbered server by server in server_list order (this server's devices "
                f"take rank ids {lo}-{hi})", source)
        k += len(devices)


def _slots(rows: Sequence[_Row], ranks: Sequence[int]) -> List[RankSlot]:
    out: List[RankSlot] = []
    k = 0
    for si, (sid, _host_ip, _pod, devices) in enumerate(rows):
        for local, (dev, ip, sdid) in enumerate(devices):
            out.append(RankSlot(ranks[k], sid, si, local, dev, ip, sdid))
            k += 1
    out.sort(key=lambda slot: slot.rank_id)
    return out


def rank_slots(table: Dict[str, Any]) -> List[RankSlot]:
    """One slot per rank, sorted by rank id (the table is validated first, without card rules)."""
    return validate_rank_table(table, rules="none")


def servers_from_table(table: Dict[str, Any]) -> List[Server]:
    _version, rows, _ranks = _parse_table(table, "rank table")
    return [Server(server_id=sid, host_ip=host_ip, super_pod_id=pod,
                   devices=tuple(Device(device_id=d, ip=ip, super_device_id=sdid) for d, ip, sdid in devices))
            for sid, host_ip, pod, devices in rows]


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
