"""Real-world cluster inputs: Atlas A3 servers (npu-smi with two chips per NPU, hccn.conf with 16
addresses and arp lines), HCCL's documented rank-table rules, npu-smi 25.x tables, and launch
taking every rank-table option that `ranktable` takes."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.accelerators import ascend_server
from cluster.errors import ClusterInputError
from cluster.hccn import parse_hccn_conf
from cluster.npu_smi import NpuSmiError, card_rules, parse_npu_smi_info
from cluster.ranktable import RankTableError, build_rank_table, load_rank_table, validate_rank_table

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *map(str, args)], cwd=str(ROOT),
                          capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------- Atlas A3 inputs
def a3_npu_smi(npus=8):
    """`npu-smi info` of an A3 server, written from the layout of the A3 table in tests/fixtures
    (npu-smi 26.0: `| NPU Name | Health | ...` / `| Chip Phy-ID | Bus-Id | ...`, two chips per NPU,
    each chip its own Phy-ID, the second chip's power `-`)."""
    rows = ["+" + "-" * 100 + "+",
            "| npu-smi 25.0.rc1                      Version: 25.0.rc1                                |",
            "| NPU   Name                | Health        | Power(W)     Temp(C)     Hugepages-Usage(page) |",
            "| Chip  Phy-ID              | Bus-Id        | AICore(%)    Memory-Usage(MB)  HBM-Usage(MB)   |",
            "+===========================+===============+==============================================+"]
    for npu in range(npus):
        for chip in range(2):
            power = "170.5" if chip == 0 else "-"
            rows.append(f"| {npu:<5} Ascend910           | OK            | {power:<12} 35          0    / 0     |")
            rows.append(f"| {chip:<5} {2 * npu + chip:<19} | 0000:{0x90 + 2 * npu + chip:02X}:00.0  | "
                        f"0            0    / 0          3400 / 65536 |")
            rows.append("+" + "-" * 100 + "+")
    return "\n".join(rows) + "\n"


def a3_hccn_conf():
    """An A3 /etc/hccn.conf: address_0..address_15 (one per chip), and several arp_N= lines per device
    (static ARP entries of its peers), written from the KEY_N=VALUE format of hccn.conf."""
    lines = []
    for i in range(16):
        lines += [f"address_{i}=29.{i // 2}.{i % 2}.{10 + i}", f"netmask_{i}=255.255.0.0",
                  f"netdetect_{i}=29.{i // 2}.0.1"]
    for i in range(16):
        for peer in (1, 2):
            lines.append(f"arp_{i}=-i {i} -s 29.{i // 2}.{peer}.1 78:b4:6a:00:{peer:02x}:{i:02x}")
    return "\n".join(lines) + "\n"


def test_a3_hccn_conf_reads_16_addresses_and_repeated_arp_lines():
    conf = parse_hccn_conf(a3_hccn_conf())
    assert sorted(conf) == list(range(16))
    assert conf[15].address == "29.7.1.25"
    assert len(conf[3].repeated["arp"]) == 2 and conf[3].extra["arp"].startswith("-i 3 -s")
    with pytest.raises(ClusterInputError, match="address_1 given twice"):
        parse_hccn_conf("address_1=1.1.1.1\naddress_1=1.1.1.2\n")       # IP keys still may not repeat


def test_a3_rules_are_chosen_from_npu_smi():
    chips = parse_npu_smi_info(a3_npu_smi())
    assert len(chips) == 16 and card_rules(chips) == "a3"
    server = ascend_server("10.0.0.1", npu_smi_text=a3_npu_smi(), hccn_conf_text=a3_hccn_conf())
    assert server.card_rules == "a3"
    table = build_rank_table([server])                        # format 1.0, auto rules -> a3
    assert [d["device_id"] for d in table["server_list"][0]["device"]] == [str(i) for i in range(16)]
    for visible in ("2-5", "8,", "14-15"):                    # 910 rules would reject each of these
        build_rank_table([ascend_server("10.0.0.1", npu_smi_text=a3_npu_smi(), hccn_conf_text=a3_hccn_conf(),
                                        visible=visible)])
    with pytest.raises(RankTableError, match="without its pair"):
        build_rank_table([ascend_server("10.0.0.1", npu_smi_text=a3_npu_smi(), hccn_conf_text=a3_hccn_conf(),
                                        visible="1-2")])
    # a 910B table (one chip per NPU) keeps the 910 card rules
    b = (Path(__file__).parent / "fixtures" / "npu-smi-910b4-2dev.txt").read_text()
    assert card_rules(parse_npu_smi_info(b)) is None


def test_a3_format_1_2_without_super_device_ids_is_valid_outside_super_pod_mode():
    server = ascend_server("node_0", npu_smi_text=a3_npu_smi(), hccn_conf_text=a3_hccn_conf(), visible="0-3",
                           host_ip="172.16.0.100")
    table = build_rank_table([server], "1.2")
    assert "super_pod_list" not in table
    assert table["server_list"][0]["device"][1] == {"device_id": "1", "device_ip": "29.0.1.11", "rank_id": "1"}
    validate_rank_table(table)
    # super-pod mode (a super pod id given) needs every super_device_id
    with pytest.raises(RankTableError, match="no super_device_id"):
        build_rank_table([ascend_server("node_0", npu_smi_text=a3_npu_smi(), hccn_conf_text=a3_hccn_conf(),
                                        visible="0-3", super_pod_id="0")], "1.2")


def test_ranktable_and_launch_on_an_a3_server(tmp_path):
    smi, conf = tmp_path / "npu-smi.txt", tmp_path / "hccn.conf"
    smi.write_text(a3_npu_smi())
    conf.write_text(a3_hccn_conf())
    res = run_cli("ranktable", "--npu-smi", smi, "--hccn-conf", conf, "--no-hccn-tool", "--devices", "0-15",
                  "-o", "-")
    assert res.returncode == 0, res.stderr
    assert len(json.loads(res.stdout)["server_list"][0]["device"]) == 16
    jd = tmp_path / "job"
    common = ["launch", "--backend", "ascend", "--npu-smi", smi, "--hccn-conf", conf, "--no-hccn-tool",
              "--job-dir", jd, "--dry-run", "--cmd", "python -c pass"]
    res = run_cli(*common, "--devices", "8-11")
    assert res.returncode == 0, res.stderr
    assert '"device_id": "11"' in res.stdout and "DEVICE_ID=8 " in res.stdout
    # every rank-table option of `ranktable` is a launch option
    res = run_cli(*common, "--devices", "0-3", "--rank-table-format", "1.2", "--super-pod-id", "0",
                  "--super-device-ids", "0=100,1=101,2=102,3=103", "--host-ip", "172.16.0.100",
                  "--server-id", "node_0")
    assert res.returncode == 0, res.stderr
    assert '"super_device_id": "103"' in res.stdout and '"host_ip": "172.16.0.100"' in res.stdout
    assert '"server_id": "node_0"' in res.stdout
    res = run_cli(*common, "--devices", "0-2", "--rules", "none")
    assert res.returncode == 0, res.stderr
    res = run_cli(*common, "--devices", "0-2")
    assert res.returncode == 2 and "3 devices; an A3 server takes 1 or an even number" in res.stderr
    res = run_cli(*common, "--devices", "0-1", "--ips", "0=10.1.1.1,1=10.1.1.2", "--rules", "910")
    assert res.returncode == 0 and '"device_ip": "10.1.1.2"' in res.stdout, res.stderr
    assert not jd.exists()


# ---------------------------------------------------------------- HCCL's documented rank-table rules
def _table(servers, version="1.0", **extra):
    """A rank table in HCCL's documented layout: servers = [(server_id, [(device_id, ip), ...])]."""
    rank = 0
    slist = []
    for sid, devs in servers:
        entries = []
        for dev, ip in devs:
            e = {"device_id": str(dev), "rank_id": str(rank)}
            if ip:
                e["device_ip"] = ip
            entries.append(e)
            rank += 1
        slist.append({"server_id": sid, "device": entries})
    t = {"version": version, "server_count": str(len(servers)), "server_list": slist, "status": "completed"}
    t.update(extra)
    return t


def _check(tmp_path, table):
    p = tmp_path / "rank_table.json"
    p.write_text(json.dumps(table, indent=4))
    return load_rank_table(p)


TWO_SERVERS = [("10.0.0.1", [(d, f"192.168.{d}.1") for d in range(8)]),
               ("10.0.0.2", [(d, f"192.168.{d}.2") for d in range(8)])]


def test_integer_rank_ids_as_merge_hccl_writes_them(tmp_path):
    t = _table(TWO_SERVERS)
    for s in t["server_list"]:
        for d in s["device"]:
            d["rank_id"] = int(d["rank_id"])
    slots = validate_rank_table(_check(tmp_path, t))
    assert [s.rank_id for s in slots] == list(range(16))


def test_one_server_without_device_ip(tmp_path):
    # HCCL: device_ip may be left out when all ranks are on one server
    t = _table([("node_0", [(0, None), (1, None)])])
    assert [s.device_ip for s in validate_rank_table(_check(tmp_path, t))] == [None, None]
    t2 = _table([("a", [(0, None), (1, None)]), ("b", [(0, None), (1, None)])])
    with pytest.raises(RankTableError, match="missing field 'device_ip'"):
        _check(tmp_path, t2)


def test_1_2_without_super_pod_list_or_super_device_id(tmp_path):
    t = _table([("node_0", [(0, "192.168.1.6"), (1, "192.168.1.7")])], "1.2")
    t["server_list"][0]["host_ip"] = "172.16.0.100"
    _check(tmp_path, t)
    # with a super_pod_list (super-pod mode) every device needs its super_device_id
    t["super_pod_list"] = [{"super_pod_id": "0", "server_list": [{"server_id": "node_0"}]}]
    with pytest.raises(RankTableError, match="device\\[0\\]: missing field 'super_device_id'"):
        _check(tmp_path, t)


def test_ranks_interleaved_across_servers_are_rejected(tmp_path):
    t = _table(TWO_SERVERS)
    a7, b0 = t["server_list"][0]["device"][7], t["server_list"][1]["device"][0]
    a7["rank_id"], b0["rank_id"] = b0["rank_id"], a7["rank_id"]        # 7 and 8 swapped
    with pytest.raises(RankTableError) as err:
        _check(tmp_path, t)
    assert "server_list[0] (server 10.0.0.1): rank_id 8 belongs to another server's block" in str(err.value)
    t = _table(TWO_SERVERS)                                              # order within a server is free
    d = t["server_list"][0]["device"]
    d[0]["rank_id"], d[1]["rank_id"] = d[1]["rank_id"], d[0]["rank_id"]
    _check(tmp_path, t)


def test_old_group_list_table_is_named(tmp_path):
    old = {"status": "completed", "group_count": "1",
           "group_list": [{"group_name": "hccl_world_group", "device_count": "2", "instance_count": "2",
                           "instance_list": [{"rank_id": "0", "server_id": "10.0.0.1",
                                              "devices": [{"device_id": "0", "device_ip": "192.168.0.1"}]}]}]}
    with pytest.raises(RankTableError) as err:
        _check(tmp_path, old)
    assert "old rank table format (group_list" in str(err.value)
    assert "pspnet-cluster ranktable" in str(err.value)


def test_a3_1_0_table_checks_with_a3_rules(tmp_path):
    t = _table([("node_0", [(d, f"29.0.{d}.1") for d in range(16)])])
    _check(tmp_path, t)


# ---------------------------------------------------------------- npu-smi 25.x
# npu-smi 25.x on newer chips: `| NPU ID | Name | Health | metrics |` with a second row whose first
# two cells are empty (`|  |  | Bus-Id | NPU Util(%) Memory-Usage(MB) HBM-Usage(MB) |`), and a process
# table whose columns match (`| NPU ID | Chip ID | Process id | Process name | Process memory(MB) |`).
SMI_25 = """\
+-------------------------------------------------------------------------------------------------+
| npu-smi 25.5.0                                   Version: 25.5.0                                |
+--------+------------------+---------------+-----------------------------------------------------+
| NPU ID | Name             | Health        | Power(W)    Temp(C)           Hugepages-Usage(page) |
|        |                  | Bus-Id        | NPU Util(%) Memory-Usage(MB)  HBM-Usage(MB)         |
+========+==================+===============+=====================================================+
| 0      | Ascend950        | OK            | 180.2       48                0     / 0             |
|        |                  | 0000:61:00.0  | 12          0    / 0          9000  / 131072        |
+========+==================+===============+=====================================================+
| 1      | Ascend950        | OK            | 101.0       44                0     / 0             |
|        |                  | 0000:62:00.0  | 0           0    / 0          4000  / 131072        |
+========+==================+===============+=====================================================+
+--------+---------+-------------+--------------------+------------------------------------------+
| NPU ID | Chip ID | Process id  | Process name       | Process memory(MB)                       |
+========+=========+=============+====================+==========================================+
| 0      | 0       | 424242      | python3.11         | 5000                                     |
+========+=========+=============+====================+==========================================+
| No running processes found in NPU 1                                                             |
+========+=========+=============+====================+==========================================+
"""


def test_npu_smi_25_layout():
    chips = parse_npu_smi_info(SMI_25)
    assert [(c.npu_id, c.chip_id, c.device_id, c.name, c.health) for c in chips] == [
        (0, 0, 0, "Ascend950", "OK"), (1, 0, 1, "Ascend950", "OK")]
    c0 = chips[0]
    assert c0.power_w == pytest.approx(180.2) and c0.temp_c == 48 and c0.bus_id == "0000:61:00.0"
    assert (c0.hbm_used_mb, c0.hbm_total_mb) == (9000, 131072) and c0.extra["NPU Util(%)"] == "12"
    assert [(p.pid, p.name, p.memory_mb) for p in c0.processes] == [(424242, "python3.11", 5000)]
    assert chips[1].processes == []


def test_npu_smi_errors_name_the_file_and_the_cause(tmp_path):
    bad = tmp_path / "smi.txt"
    bad.write_text(SMI_25.replace("| 1      | Ascend950 ", "| one    | Ascend950 "))
    res = run_cli("devices", "--npu-smi", bad, "--backend", "ascend", "--ips", "0=10.0.0.1,1=10.0.0.2")
    assert res.returncode == 2
    assert f"{bad}:10: NPU: 'one' is not a non-negative integer" in res.stderr, res.stderr
    res = run_cli("ranktable", "--npu-smi", bad, "--no-hccn-tool", "--ips", "10.0.0.1", "-o", "-")
    assert res.returncode == 2 and f"{bad}:10:" in res.stderr, res.stderr
    # a process table under a device header this parser does not know: say so, not "expected a process row"
    odd = tmp_path / "odd.txt"
    odd.write_text(SMI_25.replace("| NPU ID | Name ", "| NPU No | Name "))
    with pytest.raises(NpuSmiError) as err:
        parse_npu_smi_info(odd.read_text(), str(odd))
    assert str(err.value).startswith(f"{odd}:14: a process table, but no device table header was recognised")


# ---------------------------------------------------------------- the devices table: 310P's DDR memory
SMI_310P = """\
+--------------------------------------------------------------------------------------------------------+
| npu-smi 23.0.0                                   Version: 23.0.0                                       |
+-------------------------------+-----------------+------------------------------------------------------+
| NPU     Name                  | Health          | Power(W)     Temp(C)           Hugepages-Usage(page) |
| Chip    Device                | Bus-Id          | AICore(%)    Memory-Usage(MB)                        |
+===============================+=================+======================================================+
| 0       310P3                 | OK              | NA           45                0     / 0             |
| 0       0                     | 0000:01:00.0    | 0            1720 / 21527                            |
+===============================+=================+======================================================+
"""


def test_devices_table_shows_ddr_memory_of_310p(tmp_path):
    smi = tmp_path / "smi.txt"
    smi.write_text(SMI_310P)
    res = run_cli("devices", "--npu-smi", smi, "--backend", "ascend", "--ips", "0=10.0.0.1")
    assert res.returncode == 0, res.stderr
    header, row = res.stdout.splitlines()[1:3]
    assert "ddr MiB" in header
    assert "1720/21527" in row, res.stdout


def test_launch_spec_takes_rank_table_inputs_for_one_host_only():
    from orchestrator.jobspec import JobSpec, SpecError
    spec = JobSpec(devices="0-1", super_device_ids={0: 100, 1: 101}, ips=["10.0.0.1", "10.0.0.2"],
                   rank_table_rules="a3")
    spec.check()
    opts = spec.discover_options()
    assert opts["super_device_ids"] == {0: 100, 1: 101} and opts["ips"] == {0: "10.0.0.1", 1: "10.0.0.2"}
    with pytest.raises(SpecError, match="rank_table_rules"):
        JobSpec(devices="2", rank_table_rules="tpu").check()
    with pytest.raises(SpecError, match="hosts file describes every server"):
        JobSpec(devices="2", hosts="hosts.yaml", host_ip="172.16.0.1").check()
