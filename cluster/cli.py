"""`pspnet-cluster ranktable` and `pspnet-cluster devices`.

Only argparse is imported at module level (``pspnet-cluster --help`` must stay fast); handlers import
the rest when they run.  Bad input prints one ``pspnet-cluster CMD: error: ...`` line naming the file /
line / field and exits 2; nothing is written then.

Hosts file for ``ranktable --hosts FILE``: the launcher's hostfile (cluster/hosts.py, one parser: YAML or
JSON, ``defaults``, ``address``/``host``, ``name``, ``slots``, a ``name: {...}`` mapping), plus the rank
table keys below.  Here ``hccn_conf`` / ``npu_smi`` are files on *this* machine, relative to the hosts
file (saved from each server)::

    hosts:
      - host: node-a              # the host's address (name: a label)
        server_id: 10.0.0.1       # rank table server_id (default: address, else host, else name)
        devices: 0-7              # visible devices (default: --devices, else all found)
        hccn_conf: node-a.hccn.conf     # and/or npu_smi: node-a.npu-smi.txt
        device_ips: "0=192.168.100.101,1=192.168.101.101"   # or a mapping {0: ..., 1: ...}
        host_ip: 10.0.0.1         # format 1.2
        super_pod_id: "0"         # format 1.2
        super_device_ids: "0=0,1=1"     # format 1.2
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, Optional

from cluster.accelerators import BACKEND_CHOICES
from cluster.contracts.exitcodes import ExitCode


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "ranktable", help="write (or --check) an HCCL rank table from hccn.conf / npu-smi / IPs",
        description="Write an HCCL rank table (format 1.0, or 1.2 for A3 SuperPoD) for one server or, with "
                    "--hosts, several (ranks ordered by server, then device); or validate one with --check.")
    p.add_argument("--hccn-conf", metavar="FILE", help="device IPs from this hccn.conf (default /etc/hccn.conf "
                   "when it exists, else hccn_tool)")
    p.add_argument("--npu-smi", metavar="FILE", help="devices from this saved `npu-smi info` output "
                   "(default: run npu-smi when installed)")
    p.add_argument("--ips", metavar="LIST", help="explicit device IPs: 0=IP,1=IP,... or IP,IP,... for 0,1,...")
    p.add_argument("--devices", metavar="N|LIST", help="visible devices: a count (8) or ids (0-3, 4-7, 0,1)")
    p.add_argument("--server-id", metavar="ID", help="server_id (default: this host's IP)")
    p.add_argument("--hosts", metavar="FILE", help="several servers from a hosts file (YAML/JSON, see docs)")
    p.add_argument("--format", dest="table_format", choices=("1.0", "1.2"), default="1.0",
                   help="rank table format (1.2: Atlas A3 SuperPoD)")
    p.add_argument("--rules", choices=("auto", "910", "a3", "none"), default="auto",
                   help="card rules to check (auto: a3 when npu-smi shows two chips per NPU, else 910 for 1.0 "
                        "and a3 for 1.2)")
    p.add_argument("--host-ip", metavar="IP", help="format 1.2: the server's host_ip")
    p.add_argument("--super-pod-id", metavar="ID", default=None, help="format 1.2: super_pod_id (default 0)")
    p.add_argument("--super-device-ids", metavar="LIST",
                   help="format 1.2: super_device_id per device: 0=SDID,1=SDID,... or SDID,SDID,...")
    p.add_argument("--no-hccn-tool", action="store_true", help="never run hccn_tool")
    p.add_argument("--check", metavar="FILE", help="validate an existing rank table instead of writing one")
    p.add_argument("-o", "--output", metavar="OUT", help="where to write the table ('-' for stdout)")
    p.set_defaults(func=cmd_ranktable)

    d = sub.add_parser(
        "devices", help="list this machine's devices (Ascend chips with health, or CPU slots)",
        description="List the devices a job can use here: Ascend chips (npu-smi, hccn.conf, hccn_tool) "
                    "with health, power, temperature and memory, or the CPU backend's logical slots.")
    d.add_argument("--backend", choices=BACKEND_CHOICES, default="auto")
    d.add_argument("--devices", metavar="N|LIST", help="visible devices: a count (8) or ids (0-3,6)")
    d.add_argument("--hccn-conf", metavar="FILE", help="read this hccn.conf instead of /etc/hccn.conf")
    d.add_argument("--npu-smi", metavar="FILE", help="read this saved `npu-smi info` output instead of running it")
    d.add_argument("--ips", metavar="LIST", help="explicit device IPs: 0=IP,1=IP,...")
    d.add_argument("--bind", action="store_true", help="also print the CPU core binding plan for these devices")
    d.add_argument("--reserve-cores", type=int, default=0, metavar="K",
                   help="with --bind: keep K cores for the launcher")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=cmd_devices)


def _fail(cmd: str, exc: Exception) -> int:
    print(f"pspnet-cluster {cmd}: error: {exc}", file=sys.stderr)
    return ExitCode.BAD_INPUT


def _sdids(value: Any, source: str) -> Optional[Dict[int, int]]:
    from cluster.devices import parse_super_device_ids
    return parse_super_device_ids(value, source)


def _ips(value: Any, source: str) -> Optional[Dict[int, str]]:
    from cluster.devices import parse_device_ips
    return parse_device_ips(value, source)


def servers_from_hosts_file(path: str, default_devices: Any = None) -> List[Any]:
    """Servers (with device IPs) described by a hosts file (the launcher's hostfile, cluster/hosts.py);
    see the module docstring."""
    import os

    from cluster.accelerators import ascend_server
    from cluster.errors import ClusterInputError
    from cluster.hosts import load_hostfile

    base = os.path.dirname(os.path.abspath(path))
    servers = []
    for i, h in enumerate(load_hostfile(path)):
        where = f"{h.source or path}: hosts[{i}]"

        def read(key: str) -> Optional[str]:
            val = getattr(h, key)
            if val is None:
                return None
            full = val if os.path.isabs(str(val)) else os.path.join(base, str(val))
            try:
                with open(full, "r", encoding="utf-8", errors="replace") as fh:
                    return fh.read()
            except OSError as exc:
                raise ClusterInputError(f"{key}: cannot read {val}: {exc.strerror or exc}", where) from None

        sid = h.server_id or h.address
        conf_text, smi_text = read("hccn_conf"), read("npu_smi")
        ips = _ips(h.device_ips, f"{where}.device_ips")
        if conf_text is None and smi_text is None and not ips:
            raise ClusterInputError(f"host {sid}: no device information; give hccn_conf, npu_smi or device_ips",
                                    where)
        visible = h.device_spec(default_devices)
        servers.append(ascend_server(
            str(sid), hccn_conf_text=conf_text, npu_smi_text=smi_text, ips=ips,
            visible=str(visible) if isinstance(visible, int) else visible,
            hccn_source=str(h.hccn_conf), npu_smi_source=str(h.npu_smi), host=h.name, host_ip=h.host_ip,
            super_pod_id=h.super_pod_id, super_device_ids=_sdids(h.super_device_ids, f"{where}.super_device_ids")))
    return servers


def cmd_ranktable(args: argparse.Namespace) -> int:
    from cluster.errors import ClusterInputError

    try:
        return _ranktable(args)
    except ClusterInputError as exc:
        return _fail("ranktable", exc)


def _ranktable(args: argparse.Namespace) -> int:
    from cluster.accelerators import discover_local
    from cluster.errors import ClusterInputError
    from cluster.ranktable import build_rank_table, load_rank_table, rank_table_json, write_rank_table

    if args.check:
        table = load_rank_table(args.check, rules=args.rules)
        n = sum(len(s["device"]) for s in table["server_list"])
        print(f"{args.check}: rank table {table['version']} OK: {table['server_count']} server(s), {n} rank(s)")
        return 0
    if not args.output:
        raise ClusterInputError("say where to write the table: -o FILE (or -o - for stdout)", "ranktable")
    if args.hosts:
        if args.hccn_conf or args.npu_smi or args.ips or args.server_id or args.host_ip or args.super_pod_id \
                or args.super_device_ids:
            raise ClusterInputError("--hosts describes every server (hccn_conf, npu_smi, device_ips, server_id, "
                                    "host_ip, super_pod_id, super_device_ids per host); drop --hccn-conf/--npu-smi/"
                                    "--ips/--server-id/--host-ip/--super-pod-id/--super-device-ids", "ranktable")
        servers = servers_from_hosts_file(args.hosts, args.devices)
    else:
        servers = [discover_local("ascend", devices=args.devices, hccn_conf=args.hccn_conf, npu_smi=args.npu_smi,
                                  ips=_ips(args.ips, "--ips"), use_hccn_tool=not args.no_hccn_tool,
                                  server_id=args.server_id, host_ip=args.host_ip, super_pod_id=args.super_pod_id,
                                  super_device_ids=_sdids(args.super_device_ids, "--super-device-ids"))]
    table = build_rank_table(servers, args.table_format, args.rules)
    if args.output == "-":
        sys.stdout.write(rank_table_json(table))
    else:
        try:
            write_rank_table(args.output, table)
        except OSError as exc:
            raise ClusterInputError(f"cannot write the rank table: {exc.strerror or exc}", args.output) from None
        n = sum(len(s["device"]) for s in table["server_list"])
        print(f"wrote {args.output}: rank table {args.table_format}, {len(servers)} server(s), {n} rank(s)",
              file=sys.stderr)
    return 0


def _used_total(used: Any, total: Any) -> str:
    """``used/total`` MiB, or ``-`` where the chip has none of that memory (a total of 0 or not shown)."""
    if not total:
        return "-"
    return f"{used or 0:.0f}/{total:.0f}"


def cmd_devices(args: argparse.Namespace) -> int:
    from cluster.errors import ClusterInputError

    try:
        return _devices(args)
    except ClusterInputError as exc:
        return _fail("devices", exc)


def _devices(args: argparse.Namespace) -> int:
    import json

    from cluster.binding import make_binding_plan
    from cluster.accelerators import read_text, resolve
    from cluster.npu_smi import parse_npu_smi_info, run_npu_smi

    ips = _ips(args.ips, "--ips")
    accelerator = resolve(args.backend, hccn_conf=args.hccn_conf, npu_smi=args.npu_smi, ips=ips)
    backend = accelerator.name
    text = None
    if backend == "ascend":
        text = read_text(args.npu_smi, "npu-smi table") if args.npu_smi else run_npu_smi()
    server = accelerator.discover(devices=args.devices, hccn_conf=args.hccn_conf, npu_smi=args.npu_smi,
                                  ips=ips, npu_smi_text=text)
    chips = None
    if backend == "ascend":
        if text is not None:
            chosen = set(server.device_ids)
            chips = [c for c in parse_npu_smi_info(text, args.npu_smi or "npu-smi info") if c.device_id in chosen]
    plan = make_binding_plan(len(server.devices), reserve=args.reserve_cores) if args.bind else None
    if args.json:
        out = {"backend": backend, "server": server.to_dict(),
               "chips": None if chips is None else [c.to_dict() for c in chips],
               "binding": None if plan is None else plan.to_dict()}
        print(json.dumps(out, indent=2))
        return 0
    print(f"backend {backend}, server {server.server_id}, {len(server.devices)} device(s)")
    by_id = {c.device_id: c for c in chips or []}
    if backend == "ascend":
        print(f"{'device':>6} {'npu':>4} {'chip':>4} {'ip':<16} {'health':<8} {'power W':>8} {'temp C':>6} "
              f"{'aicore%':>7} {'hbm MiB':>13} {'ddr MiB':>13} {'procs':>5}")
        for d in server.devices:
            c = by_id.get(d.device_id)
            def f(v: Any, fmt: str = "{:.1f}") -> str:
                return "-" if v is None else fmt.format(v)
            hbm = _used_total(c.hbm_used_mb, c.hbm_total_mb) if c else "-"
            ddr = _used_total(c.memory_used_mb, c.memory_total_mb) if c else "-"   # 310/310P: DDR, no HBM
            print(f"{d.device_id:>6} {f(d.npu_id, '{}'):>4} {f(d.chip_id, '{}'):>4} {d.ip or '-':<16} "
                  f"{(c.health if c else '-'):<8} {f(c.power_w if c else None):>8} "
                  f"{f(c.temp_c if c else None, '{:.0f}'):>6} {f(c.aicore_pct if c else None, '{:.0f}'):>7} "
                  f"{hbm:>13} {ddr:>13} {len(c.processes) if c else '-':>5}")
    else:
        from cluster.devices import format_device_list
        print(f"logical slots: {format_device_list(server.device_ids)}")
    if plan is not None:
        print("core binding:")
        for line in plan.describe():
            print(f"  {line}")
    return 0
