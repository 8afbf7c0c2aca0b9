"""Accelerators as one interface: `auto` decided in one place, gpu refused, rank env and modes per kind."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster import accelerators, hccn
from cluster.accelerators import ACCELERATORS, resolve
from cluster.contracts.env import RankEnv
from cluster.devices import Device, Server
from cluster.errors import ClusterInputError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def npu_smi_only(tmp_path, fixtures_dir, monkeypatch):
    """A PATH whose only Ascend tool is npu-smi (no hccn_tool, no /etc/hccn.conf): devices, no NIC IPs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "npu-smi"
    tool.write_text(f"#!{sys.executable}\nimport sys\n"
                    f"sys.stdout.write(open({str(fixtures_dir / 'npu-smi-a3-2npu.txt')!r}).read())\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir) + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.setattr(hccn, "DEFAULT_HCCN_CONF", str(tmp_path / "no-hccn.conf"))


@pytest.fixture
def bare_host(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(hccn, "DEFAULT_HCCN_CONF", str(tmp_path / "no-hccn.conf"))


def test_auto_follows_the_inputs_and_the_hosts_found(bare_host):
    assert resolve("auto").name == "cpu" and resolve(None).name == "cpu"
    assert resolve("auto", hccn_conf="/x/hccn.conf").name == "ascend"
    assert resolve("auto", ips={0: "10.0.0.1"}).name == "ascend"
    with_ips = [Server("a", (Device(0, ip="10.0.0.1"),))]
    assert resolve("auto", servers=with_ips).name == "ascend"
    assert resolve("auto", servers=[Server("a", (Device(0),))]).name == "cpu"
    assert resolve("ASCEND").name == "ascend"
    with pytest.raises(ClusterInputError, match="unknown backend 'tpu'"):
        resolve("tpu")


def test_auto_is_the_same_for_discovery_plan_and_preflight(npu_smi_only):
    from cluster.preflight import probe
    assert resolve("auto").name == "ascend"
    assert accelerators.discover_local("auto", devices="2", server_id="h").device_ids == [0, 1]
    assert probe(backend="auto", devices="2")["backend"] == "ascend"


def test_gpu_is_refused_with_a_reason():
    with pytest.raises(ClusterInputError, match="GPUs are not supported.*--backend cpu"):
        resolve("gpu")
    res = subprocess.run([sys.executable, "-m", "orchestrator.cli", "launch", "--devices", "2", "--backend", "gpu",
                          "--dry-run", "--cmd", "python -c pass"], cwd=str(ROOT), capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and "GPUs are not supported" in res.stderr and "Traceback" not in res.stderr


def test_each_accelerator_gives_its_mode_rank_env_and_health(bare_host):
    cpu, ascend = ACCELERATORS["cpu"], ACCELERATORS["ascend"]
    assert (cpu.default_mode, ascend.default_mode) == ("dynamic", "ranktable")
    env = ascend.rank_env(RankEnv(rank=3, rank_size=8), 5).to_env()
    assert (env["DEVICE_ID"], env["PSPNET_BACKEND"], env["RANK_ID"]) == ("5", "ascend", "3")
    assert cpu.rank_env(RankEnv(rank=0), None).to_env()["DEVICE_ID"] == ""
    assert cpu.discover(devices="3", server_id="h").device_ids == [0, 1, 2]
    assert cpu.health_reader() is None and ascend.health_reader() is None     # no npu-smi on this PATH


def test_ascend_health_reader_reads_npu_smi(npu_smi_only):
    chips = ACCELERATORS["ascend"].health_reader()()
    assert [c.device_id for c in chips] == [0, 1, 2, 3] and all(c.healthy for c in chips)
