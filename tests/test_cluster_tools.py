"""The machine's own tools: npu-smi and hccn_tool run when installed (fake ones on PATH here),
None when they are not; discovery on such a host; binding a process."""
import os
import stat
import sys

import pytest

from cluster import hccn
from cluster.binding import bind_process
from cluster.accelerators import discover_local, resolve
from cluster.hccn import query_hccn_tool
from cluster.npu_smi import read_npu_smi, run_npu_smi


def _tool(bin_dir, name, body):
    path = bin_dir / name
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def ascend_host(tmp_path, fixtures_dir, monkeypatch):
    """A PATH with fake npu-smi (the A3 fixture) and hccn_tool (device N -> 29.1.0.N), no /etc/hccn.conf."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    table = fixtures_dir / "npu-smi-a3-2npu.txt"
    _tool(bin_dir, "npu-smi", f"import sys\nassert sys.argv[1:] == ['info']\nsys.stdout.write(open({str(table)!r}).read())\n")
    _tool(bin_dir, "hccn_tool",
          "import sys\na = sys.argv[1:]\nassert a[0] == '-i' and a[2:] == ['-ip', '-g'], a\n"
          "n = int(a[1])\nif n > 3: sys.exit(1)\nprint(f'ipaddr:29.1.0.{n + 1}')\nprint('netmask:255.255.0.0')\n")
    monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.setattr(hccn, "DEFAULT_HCCN_CONF", str(tmp_path / "no-hccn.conf"))
    return bin_dir


def test_tools_absent(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(hccn, "DEFAULT_HCCN_CONF", str(tmp_path / "no-hccn.conf"))
    assert run_npu_smi() is None and read_npu_smi() is None
    assert query_hccn_tool(range(8)) is None
    assert resolve("auto").name == "cpu"


def test_npu_smi_and_hccn_tool_are_run(ascend_host):
    chips = read_npu_smi()
    assert [c.device_id for c in chips] == [0, 1, 2, 3]
    assert query_hccn_tool(range(8)) == {0: "29.1.0.1", 1: "29.1.0.2", 2: "29.1.0.3", 3: "29.1.0.4"}


def test_discovery_on_an_ascend_host(ascend_host):
    assert resolve("auto").name == "ascend"
    server = discover_local("auto", devices="2-3", server_id="10.0.0.1")
    assert server.device_ids == [2, 3]
    assert [d.ip for d in server.devices] == ["29.1.0.3", "29.1.0.4"]
    assert [(d.npu_id, d.chip_id) for d in server.devices] == [(1, 0), (1, 1)]


def test_failing_npu_smi_counts_as_absent(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _tool(bin_dir, "npu-smi", "import sys\nsys.stderr.write('dcmi module initialize failed\\n')\nsys.exit(-8)\n")
    monkeypatch.setenv("PATH", str(bin_dir))
    assert run_npu_smi() is None


def test_bind_process():
    own = sorted(os.sched_getaffinity(0))
    assert bind_process(os.getpid(), own) is None
    assert sorted(os.sched_getaffinity(0)) == own
    err = bind_process(os.getpid(), [100000])
    assert err and "could not bind" in err
    assert sorted(os.sched_getaffinity(0)) == own
