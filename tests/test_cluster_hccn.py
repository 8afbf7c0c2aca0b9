"""hccn.conf and hccn_tool parsing: fixtures, malformed input naming file and line."""
import pytest

from cluster.errors import ClusterInputError
from cluster.hccn import (HccnError, check_ipv4, device_ips, parse_hccn_conf, parse_hccn_tool_ip,
                          read_hccn_conf)


def test_fixture_gives_eight_devices_with_addresses(fixtures_dir):
    entries = read_hccn_conf(str(fixtures_dir / "hccn.conf"))
    assert sorted(entries) == list(range(8))
    ips = device_ips(entries)
    assert ips[0] == "192.168.100.101"
    assert ips[4] == "192.168.100.100"
    assert ips[7] == "192.168.103.100"
    assert entries[3].netmask == "255.255.255.0"
    assert entries[3].netdetect == "192.168.103.1"


def test_comments_blank_lines_and_unknown_keys_are_kept_apart():
    text = "# written by hand\n\naddress_1=10.0.0.2\ndscp_tc_1=33:0\n  \naddress_0 = 10.0.0.1\n"
    entries = parse_hccn_conf(text, source="x.conf")
    assert device_ips(entries) == {0: "10.0.0.1", 1: "10.0.0.2"}
    assert entries[1].extra == {"dscp_tc": "33:0"}


def test_device_without_address_is_left_out_of_ips():
    entries = parse_hccn_conf("netmask_2=255.255.0.0\naddress_3=10.1.1.1\n")
    assert device_ips(entries) == {3: "10.1.1.1"}


@pytest.mark.parametrize("bad,line,words", [
    ("address_0=10.0.0.1\naddress_1 10.0.0.2\n", 2, "KEY_N=VALUE"),
    ("address_0=10.0.0.1\n\naddress=10.0.0.2\n", 3, "device id"),
    ("address_x=10.0.0.1\n", 1, "'x'"),
    ("address_0=10.0.0.1\naddress_0=10.0.0.9\n", 2, "twice (first on line 1)"),
    ("address_0=10.0.0.300\n", 1, "above 255"),
    ("netmask_0=255.255.0\n", 1, "not an IPv4"),
    ("address_0=\n", 1, "no value"),
])
def test_malformed_lines_name_file_and_line(bad, line, words):
    with pytest.raises(HccnError) as err:
        parse_hccn_conf(bad, source="/etc/hccn.conf")
    assert str(err.value).startswith(f"/etc/hccn.conf:{line}: ")
    assert words in str(err.value)
    assert err.value.line == line
    assert isinstance(err.value, ClusterInputError)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(HccnError) as err:
        read_hccn_conf(str(tmp_path / "nope.conf"))
    assert "nope.conf" in str(err.value) and "cannot read" in str(err.value)


def test_hccn_tool_output():
    assert parse_hccn_tool_ip("ipaddr:29.1.112.213\nnetmask:255.255.0.0\n") == ("29.1.112.213", "255.255.0.0")
    with pytest.raises(HccnError, match="no `ipaddr:`"):
        parse_hccn_tool_ip("netmask:255.255.0.0\n")
    with pytest.raises(HccnError) as err:
        parse_hccn_tool_ip("ipaddr:29.1.112\n", source="hccn_tool -i 3 -ip -g")
    assert str(err.value).startswith("hccn_tool -i 3 -ip -g:1: ")


def test_check_ipv4():
    assert check_ipv4("192.168.0.1") is None
    for bad in ("192.168.0", "a.b.c.d", "1.2.3.4.5", "256.1.1.1", "", "1..2.3", "１.2.3.4"):
        assert check_ipv4(bad), bad
