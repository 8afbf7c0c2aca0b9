"""Device lists, CPU slots, Ascend servers built from hccn.conf / npu-smi / explicit IPs."""
import pytest

from cluster.accelerators import ascend_server, cpu_server, discover_local
from cluster.errors import ClusterInputError
from cluster.devices import DeviceListError, format_device_list, parse_device_ips, parse_visible_devices


@pytest.mark.parametrize("spec,available,expected", [
    ("0-3,6", None, [0, 1, 2, 3, 6]),
    ("8", None, list(range(8))),
    ("2", [4, 5, 6, 7], [4, 5]),
    ("6,", None, [6]),
    (" 4 - 7 ", range(8), [4, 5, 6, 7]),
    ("3,1", range(8), [3, 1]),
    (3, None, [0, 1, 2]),
    ([5], range(8), [5]),
])
def test_visible_device_lists(spec, available, expected):
    assert parse_visible_devices(spec, available) == expected


@pytest.mark.parametrize("spec,available,words", [
    ("3-1", None, "reversed range '3-1'; write 1-3"),
    ("0-3,2", None, "listed twice: 2"),
    ("0,9", range(8), "unknown device id(s) 9; this server has 0-7"),
    ("9", range(8), "9 devices asked for, but this server has 8 (0-7)"),
    ("0", None, "at least 1"),
    ("a-b", None, "'a-b' is not a device id or range"),
    ("", None, "empty device list"),
    (",", None, "empty device list"),
    ("two", None, "'two' is not a device count"),
    ("-1,2", None, "not negative"),
    (True, None, "expected a device count"),
    ("0-99999999999", None, "device id 99999999999 is too large"),
    ("99999999999", None, "device count 99999999999 is too large"),
])
def test_bad_visible_device_lists(spec, available, words):
    with pytest.raises(DeviceListError) as err:
        parse_visible_devices(spec, available, source="--devices")
    assert str(err.value).startswith("--devices: ")
    assert words in str(err.value), str(err.value)


def test_format_device_list():
    assert format_device_list([0, 1, 2, 3, 6, 8, 9]) == "0-3,6,8-9"
    assert format_device_list([]) == ""


def test_cpu_server_slots():
    s = cpu_server(4)
    assert s.device_ids == [0, 1, 2, 3] and all(d.ip is None for d in s.devices)
    assert cpu_server(4, visible="2-3").device_ids == [2, 3]
    # on CPU `--devices 8` means 8 slots even on a 2-core machine
    assert cpu_server(None, visible="8").device_ids == list(range(8))
    assert discover_local("cpu", devices="3").device_ids == [0, 1, 2]
    with pytest.raises(DeviceListError):
        cpu_server(2, visible="0-3")


def test_ascend_server_from_hccn_conf(fixtures_dir):
    conf = (fixtures_dir / "hccn.conf").read_text()
    s = ascend_server("10.0.0.1", hccn_conf_text=conf, visible="4-7")
    assert s.device_ids == [4, 5, 6, 7]
    assert [d.ip for d in s.devices] == ["192.168.100.100", "192.168.101.100", "192.168.102.100",
                                         "192.168.103.100"]


def test_ascend_server_npu_smi_gives_ids_hccn_gives_ips(fixtures_dir):
    smi = (fixtures_dir / "npu-smi-a3-2npu.txt").read_text()
    conf = (fixtures_dir / "hccn.conf").read_text()
    s = ascend_server("n0", npu_smi_text=smi, hccn_conf_text=conf, super_device_ids={0: 100, 1: 101})
    assert s.device_ids == [0, 1, 2, 3]          # only the 4 chips npu-smi shows, not hccn.conf's 8
    assert s.devices[1].ip == "192.168.101.101" and s.devices[1].npu_id == 0 and s.devices[1].chip_id == 1
    assert [d.super_device_id for d in s.devices] == [100, 101, None, None]
    with pytest.raises(DeviceListError, match="unknown device id"):
        ascend_server("n0", npu_smi_text=smi, visible="4,")


def test_explicit_ips_override(fixtures_dir):
    conf = (fixtures_dir / "hccn.conf").read_text()
    s = ascend_server("x", hccn_conf_text=conf, ips={0: "10.9.9.9"}, visible="0-1")
    assert [d.ip for d in s.devices] == ["10.9.9.9", "192.168.101.101"]
    assert parse_device_ips("10.0.0.1,10.0.0.2") == {0: "10.0.0.1", 1: "10.0.0.2"}
    assert parse_device_ips("3=10.0.0.1") == {3: "10.0.0.1"}
    with pytest.raises(ClusterInputError, match="device 1: '10.0.0' is not an IPv4"):
        parse_device_ips("10.0.0.1,10.0.0")


def test_no_device_information_is_an_error():
    with pytest.raises(ClusterInputError, match="no Ascend devices found"):
        ascend_server("x")


def test_discover_local_reads_given_files(fixtures_dir):
    s = discover_local("auto", hccn_conf=str(fixtures_dir / "hccn.conf"), devices="2", server_id="h",
                       use_hccn_tool=False)
    assert s.server_id == "h" and [d.ip for d in s.devices] == ["192.168.100.101", "192.168.101.101"]
    with pytest.raises(ClusterInputError, match="cannot read hccn.conf"):
        discover_local("ascend", hccn_conf=str(fixtures_dir / "missing.conf"))
