"""HCCL rank tables: exact 1.0 structure (as the model zoo's hccl_tools writes it), 1.2, every
validation rule, loading existing files."""
import json

import pytest

from cluster.accelerators import ascend_server
from cluster.errors import ClusterInputError
from cluster.devices import Device, Server
from cluster.ranktable import (RankTableError, build_rank_table, load_rank_table, rank_slots,
                               rank_table_json, servers_from_table, validate_rank_table, write_rank_table)

# What hccl_tools.py writes for `--device_num "[0,8)" --server_ip 10.155.111.140` on a server with
# the fixture's /etc/hccn.conf (hand-written from its code: keys in this order, all values strings).
EXPECTED_1S_8D = """
{"version": "1.0", "server_count": "1", "server_list": [
  {"server_id": "10.155.111.140", "device": [
    {"device_id": "0", "device_ip": "192.168.100.101", "rank_id": "0"},
    {"device_id": "1", "device_ip": "192.168.101.101", "rank_id": "1"},
    {"device_id": "2", "device_ip": "192.168.102.101", "rank_id": "2"},
    {"device_id": "3", "device_ip": "192.168.103.101", "rank_id": "3"},
    {"device_id": "4", "device_ip": "192.168.100.100", "rank_id": "4"},
    {"device_id": "5", "device_ip": "192.168.101.100", "rank_id": "5"},
    {"device_id": "6", "device_ip": "192.168.102.100", "rank_id": "6"},
    {"device_id": "7", "device_ip": "192.168.103.100", "rank_id": "7"}],
   "host_nic_ip": "reserve"}],
 "status": "completed"}
"""

# merge_hccl.py of two 4-card tables (devices 4-7 on each server), rank ids renumbered by server then
# device (as strings: merge_hccl itself leaves them ints, which HCCL's format does not allow).
EXPECTED_2S = """
{"version": "1.0", "server_count": "2", "server_list": [
  {"server_id": "10.0.0.1", "device": [
    {"device_id": "4", "device_ip": "192.168.100.100", "rank_id": "0"},
    {"device_id": "5", "device_ip": "192.168.101.100", "rank_id": "1"},
    {"device_id": "6", "device_ip": "192.168.102.100", "rank_id": "2"},
    {"device_id": "7", "device_ip": "192.168.103.100", "rank_id": "3"}],
   "host_nic_ip": "reserve"},
  {"server_id": "10.0.0.2", "device": [
    {"device_id": "4", "device_ip": "192.168.100.200", "rank_id": "4"},
    {"device_id": "5", "device_ip": "192.168.101.200", "rank_id": "5"},
    {"device_id": "6", "device_ip": "192.168.102.200", "rank_id": "6"},
    {"device_id": "7", "device_ip": "192.168.103.200", "rank_id": "7"}],
   "host_nic_ip": "reserve"}],
 "status": "completed"}
"""


def ordered(text_or_obj):
    """JSON with key order kept (lists of pairs), so comparisons see the order too."""
    text = text_or_obj if isinstance(text_or_obj, str) else json.dumps(text_or_obj)
    return json.loads(text, object_pairs_hook=lambda pairs: [list(p) for p in pairs])


def srv(sid, ids, base="192.168.{}.{}", host=1, **kw):
    return Server(server_id=sid, devices=tuple(Device(device_id=i, ip=base.format(100 + i % 4, host + i))
                                               for i in ids), **kw)


def test_one_server_eight_devices_is_what_hccl_tools_writes(fixtures_dir):
    server = ascend_server("10.155.111.140", hccn_conf_text=(fixtures_dir / "hccn.conf").read_text())
    table = build_rank_table([server])
    assert ordered(table) == ordered(EXPECTED_1S_8D)
    # hccl_tools dumps with indent=4; so do we
    assert rank_table_json(table) == json.dumps(json.loads(EXPECTED_1S_8D), indent=4) + "\n"


def test_two_servers_rank_by_server_then_device(fixtures_dir):
    conf = (fixtures_dir / "hccn.conf").read_text()
    a = ascend_server("10.0.0.1", hccn_conf_text=conf, visible="4-7")
    b = ascend_server("10.0.0.2", hccn_conf_text=conf.replace(".100\n", ".200\n"), visible="4-7")
    assert ordered(build_rank_table([a, b])) == ordered(EXPECTED_2S)
    slots = rank_slots(build_rank_table([a, b]))
    assert [(s.rank_id, s.server_id, s.local_rank, s.device_id) for s in slots][3:5] == [
        (3, "10.0.0.1", 3, 7), (4, "10.0.0.2", 0, 4)]


def test_format_1_2_structure():
    a = Server("node_0", (Device(0, "192.168.1.6", super_device_id=0), Device(1, "192.168.1.7", super_device_id=1)),
               host_ip="172.16.0.100", super_pod_id="0")
    b = Server("node_1", (Device(0, "192.168.1.8", super_device_id=2), Device(1, "192.168.1.9", super_device_id=3)),
               super_pod_id="0")
    c = Server("node_2", (Device(0, "192.168.2.6", super_device_id=0), Device(1, "192.168.2.7", super_device_id=1)),
               super_pod_id="1")
    expected = """
    {"version": "1.2", "server_count": "3", "server_list": [
      {"server_id": "node_0", "host_ip": "172.16.0.100", "device": [
        {"device_id": "0", "device_ip": "192.168.1.6", "super_device_id": "0", "rank_id": "0"},
        {"device_id": "1", "device_ip": "192.168.1.7", "super_device_id": "1", "rank_id": "1"}]},
      {"server_id": "node_1", "device": [
        {"device_id": "0", "device_ip": "192.168.1.8", "super_device_id": "2", "rank_id": "2"},
        {"device_id": "1", "device_ip": "192.168.1.9", "super_device_id": "3", "rank_id": "3"}]},
      {"server_id": "node_2", "device": [
        {"device_id": "0", "device_ip": "192.168.2.6", "super_device_id": "0", "rank_id": "4"},
        {"device_id": "1", "device_ip": "192.168.2.7", "super_device_id": "1", "rank_id": "5"}]}],
     "super_pod_list": [
      {"super_pod_id": "0", "server_list": [{"server_id": "node_0"}, {"server_id": "node_1"}]},
      {"super_pod_id": "1", "server_list": [{"server_id": "node_2"}]}],
     "status": "completed"}
    """
    table = build_rank_table([a, b, c], "1.2")
    assert ordered(table) == ordered(expected)
    assert [s.super_device_id for s in validate_rank_table(table)] == [0, 1, 2, 3, 0, 1]


@pytest.mark.parametrize("servers,version,words", [
    ([], "1.0", "no servers"),
    ([Server("a", ())], "1.0", "no devices"),
    ([srv("a", [0, 1]), srv("a", [0, 1], host=50)], "1.0", "server_id also used by server_list[0]"),
    ([Server("a", (Device(0, "10.0.0.1"), Device(0, "10.0.0.2")))], "1.0", "device 0 listed twice"),
    ([Server("a", (Device(0, "10.0.0.1"), Device(1, None)))], "1.0", "device[1] (device 1): no device IP"),
    ([Server("a", (Device(0, "10.0.0.1"), Device(1, "10.0.0.1")))], "1.0",
     "device_ip 10.0.0.1 already used by server a device 0"),
    ([srv("a", [0, 1]), Server("b", (Device(0, "192.168.100.1"), Device(1, "10.1.1.1")))], "1.0",
     "device_ip 192.168.100.1 already used"),
    ([Server("a", (Device(0, "10.0.0.999"),))], "1.0", "device_ip: '10.0.0.999'"),
    ([srv("a", [0, 1, 2])], "1.0", "3 devices; a 910-class server takes 1, 2, 4 or 8"),
    ([srv("a", [3, 4])], "1.0", "devices 3,4 span cards 0-3 and 4-7"),
    ([srv("a", [2, 3, 4, 5])], "1.0", "span cards 0-3 and 4-7"),
    ([srv("a", [8])], "1.0", "outside 0-7"),
    ([srv("a", [0, 1, 2, 3]), srv("b", [0, 1], host=50)], "1.0", "has 2 devices but server_list[0]"),
    ([srv("a", [0, 1], super_pod_id="0")], "1.2", "no super_device_id (super-pod mode needs one"),
    ([Server("a", (Device(0, "10.0.0.1", super_device_id=5), Device(1, "10.0.0.2")))], "1.2",
     "device[1] (device 1): no super_device_id"),
    ([Server("a", (Device(0, "10.0.0.1", super_device_id=5), Device(1, "10.0.0.2", super_device_id=5)))],
     "1.2", "super_device_id 5 already used"),
    ([Server("a", tuple(Device(i, f"10.0.0.{i + 1}", super_device_id=i) for i in (0, 2)))], "1.2",
     "without its pair 1"),
    ([Server("a", tuple(Device(i, f"10.0.0.{i + 1}", super_device_id=i) for i in range(3)))], "1.2",
     "3 devices; an A3 server takes 1 or an even number"),
    ([srv("a", [0])], "2.0", "unknown rank table format"),
])
def test_validation_rules(servers, version, words):
    with pytest.raises(RankTableError) as err:
        build_rank_table(servers, version)
    assert words in str(err.value), str(err.value)
    assert isinstance(err.value, ClusterInputError)


def test_allowed_card_sets_pass():
    for ids in ([5], [0, 1], [6, 7], [0, 1, 2, 3], [4, 5, 6, 7], list(range(8))):
        build_rank_table([srv("a", ids)])
    build_rank_table([srv("a", [0, 2, 4])], rules="none")  # other hardware: rules off
    # A3: whole chip pairs
    build_rank_table([Server("a", tuple(Device(i, f"10.0.0.{i + 1}", super_device_id=i) for i in range(16)))],
                     "1.2")


def test_write_and_load_round_trip(tmp_path):
    table = build_rank_table([srv("10.0.0.1", [0, 1, 2, 3]), srv("10.0.0.2", [0, 1, 2, 3], host=50)])
    path = tmp_path / "rank_table.json"
    write_rank_table(path, table)
    assert load_rank_table(path) == table
    assert [s.server_id for s in servers_from_table(table)] == ["10.0.0.1", "10.0.0.2"]


def _write(tmp_path, obj):
    p = tmp_path / "rt.json"
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj, indent=4))
    return p


@pytest.mark.parametrize("mutate,words", [
    (lambda t: t["server_list"][0]["device"][1].__setitem__("rank_id", True),
     "server_list[0].device[1].rank_id: must be a string"),
    (lambda t: t["server_list"][0]["device"][1].__setitem__("rank_id", -1),
     "server_list[0].device[1].rank_id: must be a string"),
    (lambda t: t.__setitem__("server_count", "3"), "server_count: says 3 but server_list has 2"),
    (lambda t: t.__setitem__("status", "initializing"), "status: 'initializing'"),
    (lambda t: t["server_list"][1]["device"][0].__setitem__("rank_id", "0"), "rank_id 0 given to two devices"),
    (lambda t: t["server_list"][1]["device"][0].__setitem__("rank_id", "9"), "rank_id 2 is missing"),
    (lambda t: t["server_list"][1]["device"][1].pop("device_ip"), "server_list[1].device[1]: missing field 'device_ip'"),
    (lambda t: t["server_list"][1]["device"][1].__setitem__("device_id", "x"), "'x' is not a non-negative integer"),
    (lambda t: t["server_list"][1]["device"][1].__setitem__("device_ip", "192.168.100.1"),
     "device_ip 192.168.100.1 already used"),
    (lambda t: t.__setitem__("version", "0.9"), "version: '0.9'"),
])
def test_load_names_the_file_and_field(tmp_path, mutate, words):
    table = build_rank_table([srv("10.0.0.1", [0, 1]), srv("10.0.0.2", [0, 1], host=50)])
    mutate(table)
    path = _write(tmp_path, table)
    with pytest.raises(RankTableError) as err:
        load_rank_table(path)
    assert str(err.value).startswith(str(path)), str(err.value)
    assert words in str(err.value), str(err.value)


def test_load_bad_json_names_line(tmp_path):
    path = _write(tmp_path, '{\n  "version": "1.0",\n  "server_count": 1,,\n}')
    with pytest.raises(RankTableError) as err:
        load_rank_table(path)
    assert str(err.value).startswith(f"{path}:3: not valid JSON")


def test_load_1_2_checks_super_pod_list(tmp_path):
    table = build_rank_table([Server("n0", (Device(0, "10.0.0.1", super_device_id=0),))], "1.2")
    table["super_pod_list"][0]["server_list"] = [{"server_id": "n9"}]
    with pytest.raises(RankTableError, match="server n0 is in no super_pod_list entry"):
        load_rank_table(_write(tmp_path, table))
