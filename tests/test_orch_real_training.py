"""The launcher with the real trainer (MindSpore, CPU dynamic cluster, tiny crops): slow, runs in CI.

One job does both checks the issue asks for, to keep CI time down: a 2-rank dynamic-cluster job on a
generated data set, one rank killed with SIGKILL mid-run (after the epoch-1 checkpoint), ``--max-restarts 1``.
It must end finished, with every epoch and step done, the loss/learning-rate sequence continuing from
the checkpoint, and the two ranks' trainable weights equal (gradients are averaged across ranks).
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import events

ROOT = Path(__file__).resolve().parent.parent
OVERRIDES = ["crop_size=65", "batch_size=2", "max_steps_per_epoch=1", "epochs=2", "synth_images=8",
             "val_every=0", "keep_checkpoints=2", "workers=1"]


def _sidecars(job_dir, rank):
    return list((Path(job_dir) / "ckpt" / f"rank_{rank}").glob("pspnet_e0001_*.ckpt.json"))


@pytest.mark.slow
def test_real_two_rank_job_survives_kill9_and_ranks_agree(tmp_path):
    job = tmp_path / "job"
    cmd = [sys.executable, "-m", "orchestrator.cli", "launch", "--devices", "2", "--job-dir", str(job),
           "--max-restarts", "1", "--quiet", "--", f"data_root={tmp_path / 'data'}", *OVERRIDES]
    proc = subprocess.Popen(cmd, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 1500
        while not (_sidecars(job, 0) and _sidecars(job, 1)):
            assert proc.poll() is None, f"launcher ended before the epoch-1 checkpoints: {proc.stdout.read()}"
            assert time.monotonic() < deadline, "no epoch-1 checkpoints in time"
            time.sleep(0.5)
        state = json.loads((job / "job.json").read_text())
        victim = state["attempts"][0]["ranks"]["1"]["pid"]
        os.kill(victim, signal.SIGKILL)
        out, _ = proc.communicate(timeout=1800)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    d = json.loads((job / "job.json").read_text())
    assert d["state"] == "succeeded"
    a0, a1 = d["attempts"]
    assert a0["failure"]["rank"] == 1 and a0["failure"]["signal"] == "SIGKILL"
    # rank 0 sits in an AllReduce and does not act on SIGTERM: the failure grace (0.3 s) ends it
    assert a0["group_down_s"] < 5.0      # not the 10 s grace of a stop
    assert a1["state"] == "succeeded" and a1["resume"]["global_step"] == 1 and a1["resume"]["epoch"] == 1

    for r in (0, 1):
        evs = events(job, r)
        first = [e for e in evs if e["event"] == "step" and e["attempt"] == 0]
        again = [e for e in evs if e["event"] == "step" and e["attempt"] == 1]
        assert [e["global_step"] for e in first][:1] == [1]
        assert [e["global_step"] for e in again] == [2]            # continues, nothing redone or skipped
        resumed = [e for e in evs if e["event"] == "resumed" and e["attempt"] == 1]
        assert resumed and resumed[0]["global_step"] == 1
        assert again[0]["lr"] < first[0]["lr"]                     # poly LR continues from step 1
        assert np.isfinite(again[0]["loss"])
        assert [e["epoch"] for e in evs if e["event"] == "epoch" and e["attempt"] == 1] == [2]
        assert any(e["event"] == "finished" and e["attempt"] == 1 for e in evs)

    # trainable weights agree across ranks (BatchNorm running statistics are per rank on CPU)
    import mindspore as ms
    finals = [job / "ckpt" / f"rank_{r}" / "pspnet_e0002_s00000002.ckpt" for r in (0, 1)]
    p0, p1 = (ms.load_checkpoint(str(f)) for f in finals)
    names = [n for n in p0 if "moving_" not in n and p0[n].asnumpy().dtype.kind == "f"]
    assert len(names) > 100
    for n in names:
        np.testing.assert_allclose(p0[n].asnumpy(), p1[n].asnumpy(), rtol=1e-5, atol=1e-6, err_msg=n)
