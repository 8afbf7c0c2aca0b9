"""Preflight logic without SSH: the probe's findings on this machine, and the all-or-nothing verdict
across hosts (one line per failing host, MindSpore versions compared)."""
import socket

import pytest

from cluster import preflight
from cluster.devices import Device, Server
from cluster.hosts import HostSpec
from cluster.preflight import HostReport, probe, run_preflight, server_from_probe


def test_probe_reports_this_host(tmp_path):
    out = probe(backend="cpu", devices="2", job_root=str(tmp_path / "not-yet" / "runs"), min_free_gb=0.0)
    assert out["problems"] == []
    assert [d["device_id"] for d in out["server"]["devices"]] == [0, 1]
    assert out["backend"] == "cpu" and out["disk_free_gb"] > 0
    assert out["mindspore"]      # installed here: a version string


def test_probe_finds_a_busy_port_and_too_little_disk(tmp_path):
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        out = probe(backend="cpu", devices="1", job_root=str(tmp_path), port=port, min_free_gb=1e9)
    assert out["port_free"] is False
    assert any(f"rendezvous port {port} is in use" in p for p in out["problems"])
    assert any("GiB free under" in p and "need 1e+09 GiB" in p for p in out["problems"])


def test_probe_reports_bad_device_lists():
    out = probe(backend="cpu", devices="3-1", job_root=".", min_free_gb=0.0)
    assert any(p.startswith("devices: ") and "reversed range" in p for p in out["problems"])


def test_the_probe_command_prints_one_marked_json_line(capsys, tmp_path):
    assert preflight.main(["probe", "--backend", "cpu", "--devices", "1", "--job-root", str(tmp_path),
                           "--min-free-gb", "0"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(preflight.PROBE_MARK)


HOSTS = [HostSpec(address=f"10.0.0.{i}", name=f"n{i}") for i in range(1, 5)]


def fake_reports(monkeypatch, reports):
    by_name = {r.host: r for r in reports}
    monkeypatch.setattr(preflight, "check_host", lambda host, conn, **kw: by_name[host.name])


def report(name, version="2.10.0", backend="cpu", problems=()):
    return HostReport(name, name, list(problems), mindspore=version, backend=backend,
                      server=Server(server_id=name, devices=(Device(0),), host=name))


def test_all_or_nothing_with_one_line_per_failing_host(monkeypatch):
    fake_reports(monkeypatch, [report("n1"), report("n2", problems=["cannot connect to n2: refused"]),
                               report("n3", version="2.3.0"), report("n4")])
    result = run_preflight(HOSTS, {h.name: None for h in HOSTS})
    assert not result.ok
    assert result.problems == [
        "n2: cannot connect to n2: refused",
        "n3: MindSpore 2.3.0 differs from n1 (2.10.0); install the same version on every host"]
    assert "nothing was started" in result.summary()


def test_backends_must_agree(monkeypatch):
    fake_reports(monkeypatch, [report("n1"), report("n2", backend="ascend"), report("n3"), report("n4")])
    result = run_preflight(HOSTS, {h.name: None for h in HOSTS})
    assert len(result.problems) == 1 and result.problems[0].startswith("hosts disagree on the backend")


def test_ok_keeps_host_order(monkeypatch):
    fake_reports(monkeypatch, [report(h.name) for h in HOSTS])
    result = run_preflight(HOSTS, {h.name: None for h in HOSTS})
    assert result.ok and [s.host for s in result.servers] == ["n1", "n2", "n3", "n4"]
    assert result.summary().startswith("preflight ok: 4 hosts, 4 devices, MindSpore 2.10.0")


@pytest.mark.parametrize("address,expected", [("10.0.0.7", "10.0.0.7"), ("node7.cluster", "172.16.0.7")])
def test_server_ids_are_addresses_when_they_can_be(address, expected):
    host = HostSpec(address=address, name="n7")
    server = server_from_probe(host, {"server": {"server_id": "172.16.0.7", "devices": [
        {"device_id": 3, "ip": "192.168.1.3", "a_field_from_a_newer_host": 1}]}})
    assert server.server_id == expected and server.host == "n7"
    assert server.devices == (Device(device_id=3, ip="192.168.1.3"),)
    assert server_from_probe(host, {"problems": ["x"]}) is None
