"""Hostfiles: which servers a multi-host job runs on and how to reach each of them over SSH.

Two formats, told apart by their content:

YAML (all keys optional except each host's address; JSON is read the same way)::

    defaults:                       # applies to every host; a host's own keys win
      user: pspnet
      port: 22
      identity_file: ~/.ssh/id_ed25519
      python: /opt/pspnet/.venv/bin/python     # or  venv: /opt/pspnet/.venv
      workdir: /opt/pspnet                     # the checkout on the host (cwd of its ranks)
      job_root: /data/pspnet-runs              # where job dirs live on the host (default WORKDIR/runs)
      env: {ASCEND_GLOBAL_LOG_LEVEL: "3"}
    hosts:
      - name: node0                            # label in logs/events (default: the address)
        address: 10.0.0.1
        devices: 0-7                           # visible devices on this host (ids or a count)
      - address: 10.0.0.2
        slots: 8                               # or just a count
        env: {HCCL_CONNECT_TIMEOUT: "600"}
        hccn_conf: /etc/hccn.conf              # Ascend discovery on the host (npu_smi: a saved table)

``hosts`` may also be a mapping ``name: {address: ..., ...}`` or a list of bare addresses.

DeepSpeed style, one host per line (``#`` starts a comment)::

    node0 slots=8
    node1 slots=8 user=pspnet port=2222

The command-line shorthand ``--hosts a,b,c`` (``[user@]address[:port]``, comma separated) names hosts
that use the SSH defaults.  Every error reads ``FILE:LINE: what is wrong and what to do``.
"""
from __future__ import annotations

import difflib
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

from cluster.errors import ClusterInputError
from cluster.devices import parse_visible_devices

DEFAULT_PYTHON = "python3"
DEFAULT_PORT = 22


class HostfileError(ClusterInputError):
    """A bad hostfile or ``--hosts`` value (``str(err)`` is ``FILE:LINE: message``)."""


@dataclass(frozen=True)
class HostSpec:
    """One server of a multi-host job and how to reach it."""
    address: str
    name: str = ""
    port: int = DEFAULT_PORT
    user: Optional[str] = None
    identity_file: Optional[str] = None
    devices: Optional[str] = None        # visible-device spec on this host ("0-7", "8"), None: job default
    slots: Optional[int] = None          # device count when no ids are given
    python: str = DEFAULT_PYTHON
    workdir: Optional[str] = None        # cwd of its processes (None: the login directory)
    job_root: Optional[str] = None       # where job dirs are made on it (None: WORKDIR/runs or ~/runs)
    env: Mapping[str, str] = field(default_factory=dict)
    hccn_conf: Optional[str] = None      # on the host, instead of /etc/hccn.conf
    npu_smi: Optional[str] = None        # on the host: a saved `npu-smi info` table, instead of running it
    # rank table facts for `pspnet-cluster ranktable --hosts` (the launcher discovers them on the host)
    server_id: Optional[str] = None      # default: the address
    device_ips: Any = None               # "0=IP,1=IP", a list in device order, or a mapping id: IP
    host_ip: Optional[str] = None        # format 1.2
    super_pod_id: Optional[str] = None   # format 1.2
    super_device_ids: Any = None         # format 1.2: "0=ID,1=ID", a list or a mapping
    source: str = ""                     # "hosts.yaml:7", for messages

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.address)
        object.__setattr__(self, "env", dict(self.env))

    @property
    def label(self) -> str:
        return self.name

    def device_spec(self, default: Any = None) -> Any:
        """What to pass to device discovery: this host's ids, else its slot count, else ``default``."""
        if self.devices is not None:
            return self.devices
        if self.slots is not None:
            return self.slots
        return default

    def remote_job_root(self) -> str:
        if self.job_root:
            return self.job_root
        if self.workdir:
            return self.workdir.rstrip("/") + "/runs"
        return "runs"    # relative: the login directory

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["env"] = dict(self.env)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "HostSpec":
        known = {f for f in cls.__dataclass_fields__}  # type: ignore[attr-defined]
        return cls(**{k: v for k, v in d.items() if k in known})


# ---------------------------------------------------------------- YAML with line numbers

class _LineLoader(yaml.SafeLoader):
    """SafeLoader whose mappings remember the line of each key (1-based)."""


class _LineDict(dict):
    line: int = 0
    key_lines: Dict[Any, int]


class _LineList(list):
    line: int = 0
    item_lines: List[int]


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> _LineDict:
    loader.flatten_mapping(node)
    out = _LineDict()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise HostfileError(f"a key must be a plain name, not {key!r}", None, key_node.start_mark.line + 1)
        if key in out:
            raise HostfileError(f"key {key!r} given twice (first on line {out.key_lines[key]})",
                                None, key_node.start_mark.line + 1)
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[key] = key_node.start_mark.line + 1
    return out


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> _LineList:
    out = _LineList(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.item_lines = [child.start_mark.line + 1 for child in node.value]
    return out


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


# ---------------------------------------------------------------- parsing one host

#: Keys a host entry (or ``defaults``) may have -> what it means (for messages).
HOST_KEYS = {
    "name": "label used in logs and events",
    "address": "host name or IP that SSH connects to",
    "host": "same as address",
    "port": "SSH port",
    "user": "SSH user",
    "identity_file": "SSH private key file",
    "key": "same as identity_file",
    "devices": "visible devices on the host, ids (0-7) or a count (8)",
    "slots": "device count on the host",
    "python": "python interpreter on the host",
    "venv": "virtual environment on the host (python = VENV/bin/python)",
    "workdir": "working directory of the job's processes on the host",
    "job_root": "directory for job dirs on the host",
    "env": "extra environment for the host's processes",
    "hccn_conf": "hccn.conf on the host (default /etc/hccn.conf)",
    "npu_smi": "saved `npu-smi info` output on the host (default: run npu-smi)",
    "server_id": "rank table: the server's server_id (default: the address; also the address when none)",
    "device_ips": "rank table: device NIC IPs (0=IP,1=IP, a list, or a mapping)",
    "host_ip": "rank table 1.2: the server's host_ip",
    "super_pod_id": "rank table 1.2: the server's super pod",
    "super_device_ids": "rank table 1.2: each device's super_device_id (0=ID,1=ID, a list, or a mapping)",
}
_ALIASES = {"host": "address", "key": "identity_file"}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _closest(key: str) -> str:
    m = difflib.get_close_matches(key, list(HOST_KEYS), n=1, cutoff=0.5)
    return f"did you mean {m[0]!r}?" if m else f"valid keys: {', '.join(sorted(HOST_KEYS))}"


def _line_of(d: Any, key: Any, default: Optional[int]) -> Optional[int]:
    lines = getattr(d, "key_lines", None) or {}
    return lines.get(key, getattr(d, "line", default) or default)


def _host_fields(raw: Mapping[str, Any], source: str, line: Optional[int]) -> Dict[str, Any]:
    """Check and normalise the keys of one host entry (or of ``defaults``)."""
    out: Dict[str, Any] = {}
    for key, value in raw.items():
        kline = _line_of(raw, key, line)
        if not isinstance(key, str) or key not in HOST_KEYS:
            raise HostfileError(f"unknown key {key!r} ({_closest(str(key))})", source, kline)
        name = _ALIASES.get(key, key)
        if name in out:
            raise HostfileError(f"{key!r} and {name!r} both given; keep one", source, kline)
        out[name] = _check_value(name, value, source, kline)
    if "venv" in out:
        if "python" in out:
            raise HostfileError("give either python or venv, not both", source, line)
        out["python"] = out.pop("venv").rstrip("/") + "/bin/python"
    return out


def _check_value(key: str, value: Any, source: str, line: Optional[int]) -> Any:
    def bad(what: str) -> HostfileError:
        return HostfileError(f"{key}: {what}", source, line)

    if key == "port":
        if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().isdigit():
            raise bad(f"{value!r} is not a port number")
        port = int(value)
        if not 1 <= port <= 65535:
            raise bad(f"{port} is out of range 1-65535")
        return port
    if key == "slots":
        if isinstance(value, bool) or not str(value).strip().isdigit() or int(value) < 1:
            raise bad(f"{value!r} is not a positive device count")
        return int(value)
    if key == "devices":
        if isinstance(value, bool) or value is None:
            raise bad(f"{value!r} is not a device list; write ids (0-7) or a count (8)")
        spec = ",".join(str(v) for v in value) + ("," if len(value) == 1 else "") \
            if isinstance(value, (list, tuple)) else str(value)
        try:
            parse_visible_devices(spec, None, source="devices")
        except ClusterInputError as exc:
            raise bad(exc.message) from None
        return spec
    if key == "env":
        if not isinstance(value, Mapping):
            raise bad("expected a mapping NAME: value")
        env = {}
        for k, v in value.items():
            if not isinstance(k, str) or not _ENV_NAME.match(k):
                raise HostfileError(f"env: {k!r} is not a valid environment variable name", source,
                                    _line_of(value, k, line))
            if isinstance(v, (Mapping, list)) or v is None:
                raise HostfileError(f"env: {k} must be a plain value, got {v!r}", source, _line_of(value, k, line))
            env[k] = str(v).lower() if isinstance(v, bool) else str(v)
        return env
    if key in ("device_ips", "super_device_ids"):   # checked where the rank table is built
        if isinstance(value, Mapping):
            return {str(k): str(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [str(v) for v in value]
    # plain strings
    if value is None or isinstance(value, (Mapping, list, bool)) or str(value).strip() == "":
        raise bad(f"expected a non-empty text value, got {value!r}")
    text = str(value).strip()
    if key == "address" and (any(c.isspace() for c in text) or text.startswith("-")):
        raise bad(f"{text!r} is not a host name or address")
    if key == "identity_file":
        text = os.path.expanduser(text)   # the key is read on this machine; remote paths stay as written
    return text


def _make_host(fields: Dict[str, Any], defaults: Dict[str, Any], source: str, line: Optional[int]) -> HostSpec:
    merged = dict(defaults)
    if "env" in defaults and "env" in fields:
        fields = dict(fields)
        fields["env"] = {**defaults["env"], **fields["env"]}
    merged.update(fields)
    if "address" not in merged and "server_id" in fields:   # a rank table's server_id is the server's IP
        merged["address"] = fields["server_id"]
    if "address" not in merged:
        raise HostfileError("host has no address; add `address: HOST`", source, line)
    if merged.get("devices") is not None and merged.get("slots") is not None:
        n = len(parse_visible_devices(merged["devices"], None))
        if n != merged["slots"]:
            raise HostfileError(f"devices {merged['devices']!r} name {n} devices but slots is {merged['slots']}; "
                                "give one of them", source, line)
    return HostSpec(source=f"{source}:{line}" if line else source, **merged)


# ---------------------------------------------------------------- the formats

def parse_hostfile_text(text: str, source: str = "<hostfile>") -> List[HostSpec]:
    """Parse a hostfile's text (YAML or DeepSpeed-style lines)."""
    if _looks_like_deepspeed(text):
        return _check_unique(_parse_deepspeed(text, source), source)
    try:
        raw = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - _LineLoader is a SafeLoader
    except HostfileError as exc:
        raise HostfileError(exc.message, source, exc.line) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise HostfileError(f"not valid YAML: {getattr(exc, 'problem', None) or exc}", source,
                            mark.line + 1 if mark is not None else None) from None
    if raw is None:
        raise HostfileError("the hostfile names no hosts", source)
    if isinstance(raw, list):
        raw_hosts, defaults_raw, top_line = raw, {}, 1
    elif isinstance(raw, dict):
        unknown = [k for k in raw if k not in ("hosts", "defaults")]
        if unknown:
            k = unknown[0]
            raise HostfileError(f"unknown top-level key {k!r}; a hostfile has `defaults:` and `hosts:`",
                                source, _line_of(raw, k, 1))
        if "hosts" not in raw:
            raise HostfileError("no `hosts:` list", source, 1)
        raw_hosts, defaults_raw, top_line = raw["hosts"], raw.get("defaults") or {}, _line_of(raw, "hosts", 1)
        if not isinstance(defaults_raw, dict):
            raise HostfileError("`defaults:` must be a mapping of KEY: value", source, _line_of(raw, "defaults", 1))
    else:
        raise HostfileError("expected `hosts:` with a list of hosts, or `host slots=N` lines", source, 1)
    dline = getattr(defaults_raw, "line", None)
    defaults = _host_fields(defaults_raw, source, dline)
    if "address" in defaults or "name" in defaults:
        raise HostfileError("`defaults:` cannot set address or name", source, dline)
    hosts: List[HostSpec] = []
    if isinstance(raw_hosts, dict):
        for name, entry in raw_hosts.items():
            line = _line_of(raw_hosts, name, top_line)
            if entry is None:
                entry = {}
            if not isinstance(entry, dict):
                raise HostfileError(f"host {name!r}: expected a mapping of KEY: value", source, line)
            fields = _host_fields(entry, source, line)
            fields.setdefault("name", str(name))
            fields.setdefault("address", str(name))
            hosts.append(_make_host(fields, defaults, source, line))
    elif isinstance(raw_hosts, list):
        lines = getattr(raw_hosts, "item_lines", [top_line] * len(raw_hosts))
        for entry, line in zip(raw_hosts, lines):
            if isinstance(entry, str):
                fields = {"address": _check_value("address", entry, source, line)}
            elif isinstance(entry, dict):
                fields = _host_fields(entry, source, line)
            else:
                raise HostfileError(f"a host is an address or a mapping with `address:`, not {entry!r}",
                                    source, line)
            hosts.append(_make_host(fields, defaults, source, line))
    else:
        raise HostfileError("`hosts:` must be a list (or a mapping name: {...})", source, top_line)
    if not hosts:
        raise HostfileError("the hostfile names no hosts", source, top_line)
    return _check_unique(hosts, source)


_DS_LINE = re.compile(r"^\s*(\S+)((?:\s+[A-Za-z_]+=\S+)*)\s*$")


def _looks_like_deepspeed(text: str) -> bool:
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        # `name slots=8 ...` or a bare `name`; YAML starts otherwise (`key:`, `- item`, `[`, `{`)
        return bool(re.match(r"^[^\s:\-\[{'\"][^\s:=]*(\s+[A-Za-z_]+=\S+)*$", line))
    return False


def _parse_deepspeed(text: str, source: str) -> List[HostSpec]:
    allowed = {"slots", "port", "user", "devices", "python", "venv", "workdir", "job_root", "name",
               "identity_file", "hccn_conf", "npu_smi"}
    hosts = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _DS_LINE.match(line)
        if not m:
            raise HostfileError(f"expected `HOST slots=N [key=value ...]`, got {line!r}", source, n)
        fields: Dict[str, Any] = {"address": _check_value("address", m.group(1), source, n)}
        for pair in m.group(2).split():
            key, _, value = pair.partition("=")
            if key not in allowed:
                raise HostfileError(f"unknown key {key!r} (valid: {', '.join(sorted(allowed))})", source, n)
            if key in fields:
                raise HostfileError(f"{key!r} given twice", source, n)
            fields[key] = _check_value(key, value, source, n)
        if "venv" in fields:
            fields["python"] = fields.pop("venv").rstrip("/") + "/bin/python"
        hosts.append(_make_host(fields, {}, source, n))
    if not hosts:
        raise HostfileError("the hostfile names no hosts", source)
    return hosts


def _check_unique(hosts: Sequence[HostSpec], source: str) -> List[HostSpec]:
    seen_names: Dict[str, HostSpec] = {}
    seen_targets: Dict[Tuple[str, int], HostSpec] = {}
    for h in hosts:
        line = _src_line(h)
        if h.name in seen_names:
            raise HostfileError(f"host name {h.name!r} used twice (also at {seen_names[h.name].source}); "
                                "give each host its own `name:`", source, line)
        target = (h.address, h.port)
        if target in seen_targets:
            raise HostfileError(f"{h.address}:{h.port} listed twice (also at {seen_targets[target].source})",
                                source, line)
        seen_names[h.name] = h
        seen_targets[target] = h
    return list(hosts)


def _src_line(h: HostSpec) -> Optional[int]:
    tail = h.source.rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else None


def load_hostfile(path: Any) -> List[HostSpec]:
    p = Path(os.path.expanduser(str(path)))
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HostfileError("hostfile not found; give a YAML hostfile or --hosts a,b,c", str(path)) from None
    except (OSError, UnicodeError) as exc:
        raise HostfileError(f"cannot read the hostfile: {exc}", str(path)) from None
    return parse_hostfile_text(text, str(path))


_SHORT = re.compile(r"^(?:(?P<user>[^@\s:]+)@)?(?P<address>[^@\s:,]+|\[[0-9A-Fa-f:]+\])(?::(?P<port>\d+))?$")


def parse_hosts_shorthand(text: str, source: str = "--hosts") -> List[HostSpec]:
    """``a,b,c`` / ``user@a:2222,b``: hosts with the SSH defaults."""
    hosts = []
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise HostfileError("no hosts given; write --hosts a,b,c or a hostfile path", source)
    for k, part in enumerate(parts, 1):
        if not part:
            raise HostfileError(f"empty host name at position {k} in {text!r}", source)
        m = _SHORT.match(part)
        if not m:
            raise HostfileError(f"{part!r} is not [user@]host[:port]", source)
        fields: Dict[str, Any] = {"address": m.group("address").strip("[]")}
        if m.group("user"):
            fields["user"] = m.group("user")
        if m.group("port"):
            fields["port"] = _check_value("port", m.group("port"), source, None)
        hosts.append(HostSpec(source=f"{source}[{k}]", **fields))
    return _check_unique(hosts, source)


def resolve_hosts(value: Any, *, defaults: Optional[Mapping[str, Any]] = None) -> List[HostSpec]:
    """``--hosts`` value: a hostfile path (YAML or DeepSpeed lines) or ``a,b,c``.

    ``defaults`` (e.g. ``{"python": sys.executable}``) fill what neither the file nor the shorthand set.
    """
    text = str(value).strip()
    p = Path(os.path.expanduser(text))
    looks_like_file = p.exists() or "/" in text or text.endswith((".yaml", ".yml", ".txt", ".hosts")) \
        or text.startswith("hostfile")
    hosts = load_hostfile(p) if looks_like_file else parse_hosts_shorthand(text)
    if defaults:
        hosts = [apply_defaults(h, defaults) for h in hosts]
    return hosts


def apply_defaults(host: HostSpec, defaults: Mapping[str, Any]) -> HostSpec:
    """Fill unset fields of ``host`` from ``defaults`` (fields still at their dataclass default)."""
    blank = HostSpec(address=host.address)
    changes = {}
    for key, value in defaults.items():
        if key in ("address", "name", "source"):
            continue
        if getattr(host, key) == getattr(blank, key):
            changes[key] = value
    return replace(host, **changes) if changes else host
