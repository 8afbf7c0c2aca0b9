"""`pspnet-cluster ranktable` and `pspnet-cluster devices`: files written, exit 2 with a message on bad input."""
import json
import subprocess
import sys

import pytest

from cluster.ranktable import load_rank_table
from orchestrator.cli import main


def run(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_ranktable_writes_the_file(tmp_path, fixtures_dir, capsys):
    out = tmp_path / "rt.json"
    rc, _, err = run(["ranktable", "--hccn-conf", str(fixtures_dir / "hccn.conf"), "--devices", "0-3",
                      "--server-id", "10.0.0.1", "--no-hccn-tool", "-o", str(out)], capsys)
    assert rc == 0, err
    table = load_rank_table(out)
    assert table["server_list"][0]["server_id"] == "10.0.0.1"
    assert [d["device_id"] for d in table["server_list"][0]["device"]] == ["0", "1", "2", "3"]
    assert "4 rank(s)" in err
    rc, text, _ = run(["ranktable", "--check", str(out)], capsys)
    assert rc == 0 and "OK" in text


def test_ranktable_to_stdout_and_format_1_2(fixtures_dir, capsys):
    rc, text, err = run(["ranktable", "--npu-smi", str(fixtures_dir / "npu-smi-a3-2npu.txt"),
                         "--ips", "10.1.0.1,10.1.0.2,10.1.0.3,10.1.0.4", "--format", "1.2",
                         "--super-device-ids", "0,1,2,3", "--server-id", "node_0", "--host-ip", "172.16.0.1",
                         "--no-hccn-tool", "-o", "-"], capsys)
    assert rc == 0, err
    table = json.loads(text)
    assert table["version"] == "1.2" and table["server_list"][0]["host_ip"] == "172.16.0.1"
    assert [d["super_device_id"] for d in table["server_list"][0]["device"]] == ["0", "1", "2", "3"]
    assert table["super_pod_list"] == [{"super_pod_id": "0", "server_list": [{"server_id": "node_0"}]}]


def test_ranktable_from_hosts_file(tmp_path, fixtures_dir, capsys):
    conf = (fixtures_dir / "hccn.conf").read_text()
    (tmp_path / "a.conf").write_text(conf)
    (tmp_path / "b.conf").write_text(conf.replace("192.168.", "192.169."))
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text("hosts:\n  - host: node-a\n    server_id: 10.0.0.1\n    hccn_conf: a.conf\n"
                     "    user: ignored-here\n  - host: 10.0.0.2\n    hccn_conf: b.conf\n")
    out = tmp_path / "rt.json"
    rc, _, err = run(["ranktable", "--hosts", str(hosts), "--devices", "8", "-o", str(out)], capsys)
    assert rc == 0, err
    table = load_rank_table(out)
    assert [s["server_id"] for s in table["server_list"]] == ["10.0.0.1", "10.0.0.2"]
    assert table["server_list"][1]["device"][0] == {"device_id": "0", "device_ip": "192.169.100.101",
                                                    "rank_id": "8"}


@pytest.mark.parametrize("extra,words", [
    (["--devices", "2-5"], "span cards 0-3 and 4-7"),
    (["--devices", "0-9"], "unknown device id(s) 8-9"),
    (["--devices", "5-2"], "reversed range"),
    (["--format", "1.2", "--super-pod-id", "0"], "no super_device_id (super-pod mode"),
])
def test_ranktable_bad_input_exits_2_and_writes_nothing(tmp_path, fixtures_dir, capsys, extra, words):
    out = tmp_path / "rt.json"
    rc, _, err = run(["ranktable", "--hccn-conf", str(fixtures_dir / "hccn.conf"), "--no-hccn-tool",
                      "-o", str(out), *extra], capsys)
    assert rc == 2
    assert err.startswith("pspnet-cluster ranktable: error: ") and words in err, err
    assert not out.exists()


def test_ranktable_malformed_hccn_conf_names_file_and_line(tmp_path, capsys):
    conf = tmp_path / "hccn.conf"
    conf.write_text("address_0=192.168.1.1\naddress_1=192.168.1\n")
    rc, _, err = run(["ranktable", "--hccn-conf", str(conf), "--no-hccn-tool", "-o", str(tmp_path / "o.json")],
                     capsys)
    assert rc == 2 and f"{conf}:2: address_1" in err


def test_ranktable_without_output_or_with_bad_hosts(tmp_path, capsys):
    rc, _, err = run(["ranktable", "--ips", "10.0.0.1"], capsys)
    assert rc == 2 and "-o FILE" in err
    hosts = tmp_path / "h.yaml"
    hosts.write_text("hosts:\n  - host: a\n")
    rc, _, err = run(["ranktable", "--hosts", str(hosts), "-o", str(tmp_path / "o.json")], capsys)
    assert rc == 2 and "hosts[0]" in err and "no device information" in err
    hosts.write_text("hosts: [a, b\n")
    rc, _, err = run(["ranktable", "--hosts", str(hosts), "-o", str(tmp_path / "o.json")], capsys)
    assert rc == 2 and "not valid YAML" in err


def test_ranktable_check_rejects_a_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"version": "1.0", "server_count": 1, "server_list": [], "status": "completed"}))
    rc, _, err = run(["ranktable", "--check", str(bad)], capsys)
    assert rc == 2 and "server_count: must be a string" in err


def test_devices_cpu_and_json(capsys):
    rc, text, _ = run(["devices", "--backend", "cpu", "--devices", "4", "--bind"], capsys)
    assert rc == 0 and "logical slots: 0-3" in text and "local rank 3: cores" in text
    rc, text, _ = run(["devices", "--backend", "cpu", "--devices", "2", "--json"], capsys)
    data = json.loads(text)
    assert data["backend"] == "cpu" and [d["device_id"] for d in data["server"]["devices"]] == [0, 1]


def test_devices_ascend_from_saved_table(fixtures_dir, capsys):
    rc, text, _ = run(["devices", "--npu-smi", str(fixtures_dir / "npu-smi-a3-2npu.txt"), "--json"], capsys)
    assert rc == 0
    data = json.loads(text)
    assert data["backend"] == "ascend"
    assert [c["power_w"] for c in data["chips"]] == [162.6, None, 186.3, None]
    rc, text, _ = run(["devices", "--npu-smi", str(fixtures_dir / "npu-smi-910b4-2dev.txt")], capsys)
    assert rc == 0 and "3197/65536" in text


def test_devices_bad_input_exits_2(capsys):
    rc, _, err = run(["devices", "--backend", "cpu", "--devices", "3-1"], capsys)
    assert rc == 2 and "--devices: reversed range" in err


def test_help_lists_the_commands():
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "ranktable" in proc.stdout and "devices" in proc.stdout


def test_ranktable_1_2_from_hosts_file(tmp_path, fixtures_dir, capsys):
    smi = (fixtures_dir / "npu-smi-a3-2npu.txt").read_text()
    (tmp_path / "a3.txt").write_text(smi)
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text(
        "hosts:\n"
        "  - {server_id: node_0, npu_smi: a3.txt, device_ips: '10.0.0.1,10.0.0.2,10.0.0.3,10.0.0.4',\n"
        "     host_ip: 172.16.0.1, super_pod_id: 0, super_device_ids: {0: 0, 1: 1, 2: 2, 3: 3}}\n"
        "  - {server_id: node_1, npu_smi: a3.txt, device_ips: '10.0.1.1,10.0.1.2,10.0.1.3,10.0.1.4',\n"
        "     super_pod_id: 1, super_device_ids: '0,1,2,3'}\n")
    out = tmp_path / "rt.json"
    rc, _, err = run(["ranktable", "--hosts", str(hosts), "--format", "1.2", "-o", str(out)], capsys)
    assert rc == 0, err
    table = load_rank_table(out)
    assert [p["super_pod_id"] for p in table["super_pod_list"]] == ["0", "1"]
    assert table["server_list"][1]["device"][3] == {"device_id": "3", "device_ip": "10.0.1.4",
                                                    "super_device_id": "3", "rank_id": "7"}
    rc, _, err = run(["ranktable", "--hosts", str(hosts), "--host-ip", "1.1.1.1", "-o", str(out)], capsys)
    assert rc == 2 and "--hosts describes every server" in err


def test_ranktable_reads_the_launchers_hostfile_layout(tmp_path, fixtures_dir, capsys):
    conf = (fixtures_dir / "hccn.conf").read_text()
    (tmp_path / "a.conf").write_text(conf)
    (tmp_path / "b.conf").write_text(conf.replace("192.168.", "192.170."))
    hosts = tmp_path / "hosts.yaml"
    hosts.write_text("defaults:\n  user: pspnet\n  slots: 4\n"
                     "hosts:\n  node0: {address: 10.0.0.1, hccn_conf: a.conf}\n"
                     "  node1: {address: 10.0.0.2, hccn_conf: b.conf, devices: 4-7}\n")
    out = tmp_path / "rt.json"
    rc, _, err = run(["ranktable", "--hosts", str(hosts), "-o", str(out)], capsys)
    assert rc == 0, err
    table = load_rank_table(out)
    assert [s["server_id"] for s in table["server_list"]] == ["10.0.0.1", "10.0.0.2"]
    assert [d["device_id"] for d in table["server_list"][0]["device"]] == ["0", "1", "2", "3"]
    assert [d["device_id"] for d in table["server_list"][1]["device"]] == ["4", "5", "6", "7"]


def test_ranktable_hosts_are_read_by_the_launchers_hostfile_parser(tmp_path, fixtures_dir, capsys):
    (tmp_path / "a.conf").write_text((fixtures_dir / "hccn.conf").read_text())
    hosts = tmp_path / "hosts.json"
    hosts.write_text(json.dumps({"defaults": {"slots": 2}, "hosts": [{"address": "10.0.0.1", "hccn_conf": "a.conf"}]}))
    out = tmp_path / "rt.json"
    rc, _, err = run(["ranktable", "--hosts", str(hosts), "-o", str(out)], capsys)
    assert rc == 0, err
    table = load_rank_table(out)
    assert [s["server_id"] for s in table["server_list"]] == ["10.0.0.1"]
    assert [d["device_id"] for d in table["server_list"][0]["device"]] == ["0", "1"]
    # the launcher's checks, with file and line: a misspelt key is named, with what was meant
    bad = tmp_path / "hosts.yaml"
    bad.write_text("hosts:\n  - address: 10.0.0.1\n    hccn_cnof: a.conf\n")
    rc, _, err = run(["ranktable", "--hosts", str(bad), "-o", str(out)], capsys)
    assert rc == 2 and f"{bad}:3" in err and "did you mean 'hccn_conf'" in err
    # and the launcher reads a rank-table hosts file (its rank table keys are facts it ignores)
    from cluster.hosts import load_hostfile
    (h,) = load_hostfile(tmp_path / "hosts.json")
    assert (h.address, h.slots, h.hccn_conf) == ("10.0.0.1", 2, "a.conf")
