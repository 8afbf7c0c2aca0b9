"""The real thing: a 2-host x 1-rank MindSpore (CPU) PSPNet job over SSH, run to completion.

Two loopback "hosts" with their own sshd and their own job roots (no shared job dir); the scheduler of
the dynamic cluster runs on the first host.  Small: smoke config, crop 65, batch 2, 1 epoch of at most
2 steps on a generated data set.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sshd import sshd_cluster  # noqa: F401 - the fixture

pytestmark = [pytest.mark.slow, pytest.mark.ssh]


def test_two_hosts_train_pspnet_to_completion(sshd_cluster, tmp_path):
    cluster = sshd_cluster(2)
    hostfile = cluster.write_hostfile(tmp_path / "hosts.yaml")
    data = tmp_path / "data"
    made = subprocess.run([sys.executable, "-m", "orchestrator.cli", "data", "synth", str(data), "--images", "8"],
                          capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    job = tmp_path / "runs" / "ms-2hosts"
    res = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "launch", "--hosts", str(hostfile), "--devices", "1",
         "--job-dir", str(job), "--config", "smoke", "--quiet", "--",
         "crop_size=65", "batch_size=2", "max_steps_per_epoch=2", "epochs=1", f"data_root={data}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    state = json.loads((job / "job.json").read_text())
    assert state["state"] == "succeeded"
    for rank, host in enumerate(cluster.hosts):
        evs = [json.loads(l) for l in (job / "events" / f"rank_{rank}.jsonl").read_text().splitlines() if l.strip()]
        kinds = [e["event"] for e in evs]
        assert kinds[0] == "start" and kinds[-1] == "finished"
        assert "step" in kinds and "checkpoint" in kinds
        start = evs[0]
        assert start["mode"] == "dynamic" and start["world_size"] == 2 and start["host"] == host.name
        assert all(e["host"] == host.name and e["rank"] == rank for e in evs)
        # the checkpoint stays on the rank's own host, under that host's job root
        ckpt = next(e for e in evs if e["event"] == "checkpoint")
        assert ckpt["path"].startswith(cluster.job_root(host) + "/ms-2hosts/ckpt/rank_%d/" % rank)
        assert Path(ckpt["path"]).is_file() and Path(ckpt["path"] + ".json").is_file()
    # both ranks trained with the same config, copied to each host
    shas = {json.loads((job / "events" / f"rank_{r}.jsonl").read_text().splitlines()[0])["config_sha"]
            for r in (0, 1)}
    assert len(shas) == 1
    for host in cluster.hosts:
        assert (Path(cluster.job_root(host)) / "ms-2hosts" / "config.resolved.yaml").is_file()
    assert (job / "logs" / "scheduler.log").stat().st_size > 0
