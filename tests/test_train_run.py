"""The real trainer (MindSpore, CPU, GRAPH_MODE) on the generated data set at a tiny crop.

One run trains 2 epochs x 4 steps with checkpoints every 2 steps; a second run resumes from its step-2
checkpoint and must reproduce the rest bit for bit (losses and final checkpoint bytes).  Two ranks in a
dynamic cluster (scheduler + 2 workers started here) must end with identical trainable weights while
seeing different data.  Evaluation, export and inference run on the first run's checkpoint.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cluster.contracts.jobdir import list_checkpoints, read_sidecar
from cluster.contracts.events import parse_line
from helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
TINY = ["crop_size=65", "base_size=80", "batch_size=2", "batch_size_val=2", "init_lr=0.01", "workers=1"]
pytestmark = pytest.mark.slow


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PSPNET_", "MS_", "RANK_")) and k not in ("DEVICE_ID",)}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run(args, cwd, env=None, timeout=900):
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env or clean_env(), capture_output=True,
                          text=True, timeout=timeout)
    events = [e for e in (parse_line(l) for l in proc.stdout.splitlines() if l.startswith("@pspnet ")) if e]
    return proc, events


def train(tmp, data, out, *extra, env=None):
    args = ["-m", "trainer.train", "--config", "smoke", *TINY, f"data_root={data}", "synth_images=12",
            f"output_dir={out}", *extra]
    return run(args, tmp, env)


def losses(events):
    return {e["global_step"]: e["loss"] for e in events if e["event"] == "step"}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    proc, events = train(tmp, tmp / "data", tmp / "a", "epochs=2", "max_steps_per_epoch=4", "ckpt_every_steps=2",
                         "keep_checkpoints=5", "val_every=2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp, proc, events


def test_one_rank_trains_emits_the_contract_and_the_loss_falls(first_run):
    tmp, proc, events = first_run
    names = [e["event"] for e in events]
    assert names[0] == "start" and names[1] == "compiled" and names[-1] == "finished"
    assert names.count("step") == 8 and names.count("epoch") == 2
    start = events[0]
    assert start["mode"] == "single" and start["backend"] == "cpu" and start["config_sha"]
    steps = [e for e in events if e["event"] == "step"]
    assert [(e["epoch"], e["step"]) for e in steps] == [(1, 1), (1, 2), (1, 3), (1, 4), (2, 1), (2, 2), (2, 3), (2, 4)]
    assert [e["global_step"] for e in steps] == list(range(1, 9))
    lrs = [e["lr"] for e in steps]
    assert lrs[0] == pytest.approx(0.01) and all(a > b for a, b in zip(lrs, lrs[1:]))
    loss = [e["loss"] for e in steps]
    assert np.mean(loss[4:]) < 0.8 * np.mean(loss[:4]), loss
    epoch2 = [e for e in events if e["event"] == "epoch"][-1]
    for key in ("miou", "macc", "allacc", "val_loss", "best_miou", "data_wait_share", "mean_step_time_s"):
        assert epoch2[key] is not None, key
    assert 0.0 <= epoch2["miou"] <= 1.0 and 0.0 <= epoch2["data_wait_share"] < 1.0
    assert "Train epoch time:" in proc.stdout and "per step time:" in proc.stdout
    assert f"=== epoch:    2, device id:  0, best miou: {epoch2['best_miou']:6.4f}, miou: {epoch2['miou']:6.4f}" \
        in proc.stdout
    ckpts = [e for e in events if e["event"] == "checkpoint" and e["kind"] == "last"]
    assert [c["global_step"] for c in ckpts] == [2, 4, 6, 8]
    kept = list_checkpoints(tmp / "a" / "ckpt" / "rank_0")
    assert [k.global_step for k in kept] == [2, 4, 6, 8] and all(k.intact() for k in kept)
    assert read_sidecar(kept[0].path).sidecar["step_in_epoch"] == 2


def test_validation_loss_is_within_a_small_factor_of_the_training_loss(first_run):
    """Eval mode (BN running statistics) must describe the net that was trained: after 8 steps from random
    initialisation the val loss (main head) is close to the train loss (main + 0.4 aux), not 1e5 times it,
    and the run starts at the chance loss (1.4 ln 21 = 4.26), not at 10-25."""
    _, _, events = first_run
    loss = [e["loss"] for e in events if e["event"] == "step"]
    assert loss[0] == pytest.approx(1.4 * np.log(21), rel=0.25), loss
    val = [e for e in events if e["event"] == "epoch"][-1]["val_loss"]
    train_loss = float(np.mean(loss[4:]))
    assert train_loss / 3 < val < 3 * train_loss, (val, loss)


def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(first_run):
    tmp, _, events = first_run
    ckpt = tmp / "a" / "ckpt" / "rank_0" / "pspnet_e0001_s00000002.ckpt"
    proc, resumed = train(tmp, tmp / "data", tmp / "b", "epochs=2", "max_steps_per_epoch=4", "ckpt_every_steps=2",
                          "keep_checkpoints=5", "val_every=2", env=clean_env(PSPNET_RESUME=ckpt))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ev = [e for e in resumed if e["event"] == "resumed"]
    assert ev and ev[0]["global_step"] == 2 and ev[0]["epoch"] == 1
    again = losses(resumed)
    assert sorted(again) == [3, 4, 5, 6, 7, 8]
    assert again == {k: v for k, v in losses(events).items() if k > 2}     # exact float equality
    a = (tmp / "a" / "ckpt" / "rank_0" / "pspnet_e0002_s00000008.ckpt").read_bytes()
    b = (tmp / "b" / "ckpt" / "rank_0" / "pspnet_e0002_s00000008.ckpt").read_bytes()
    assert a == b


def test_resume_refuses_another_config_and_a_corrupted_file(first_run):
    tmp, _, _ = first_run
    ckpt = tmp / "a" / "ckpt" / "rank_0" / "pspnet_e0001_s00000004.ckpt"
    proc, events = train(tmp, tmp / "data", tmp / "c", "epochs=2", "max_steps_per_epoch=4", "init_lr=0.003",
                         "--resume", str(ckpt))
    assert proc.returncode == 2
    err = [e for e in events if e["event"] == "error"]
    assert err and "config" in err[0]["message"] and "compiled" not in [e["event"] for e in events]
    bad = tmp / "bad" / "pspnet_e0001_s00000004.ckpt"
    bad.parent.mkdir()
    data = bytearray(ckpt.read_bytes())
    data[-100] ^= 0xFF
    bad.write_bytes(bytes(data))
    (bad.parent / (bad.name + ".json")).write_text((ckpt.parent / (ckpt.name + ".json")).read_text())
    proc, events = train(tmp, tmp / "data", tmp / "c", "epochs=2", "max_steps_per_epoch=4", "--resume", str(bad))
    assert proc.returncode == 2 and "sha256" in proc.stderr


def test_eval_export_infer_on_the_trained_checkpoint(first_run):
    tmp, _, events = first_run
    best = tmp / "a" / "ckpt" / "rank_0" / "pspnet_best.ckpt"
    assert read_sidecar(best).kind == "best"
    common = ["--config", "smoke", "--ckpt", str(best)]
    data = [f"data_root={tmp / 'data'}", "synth_images=12", "crop_size=65", "base_size=80"]
    proc, _ = run(["-m", "trainer.eval", *common, "--flip", "--scales", "0.75,1.0", "--json",
                   str(tmp / "eval.json"), *data], tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp / "eval.json").read_text())
    assert f"VOC2012-AUG-ms:mIoU/mAcc/allAcc {result['miou']:.4f}/{result['macc']:.4f}/{result['allacc']:.4f}." \
        in proc.stdout
    assert result["images"] == 3 and result["pixels"] > 0 and 0 <= result["miou"] <= 1
    proc, _ = run(["-m", "trainer.export", *common, "-o", str(tmp / "exp" / "psp.mindir"), *data], tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp / "exp" / "psp.mindir").stat().st_size > 100e6
    proc, _ = run(["-m", "trainer.infer", *common, "-o", str(tmp / "masks"), str(tmp / "data" / "JPEGImages"),
                   *data], tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from PIL import Image
    masks = sorted((tmp / "masks").glob("*.png"))
    assert len(masks) == 12
    with Image.open(masks[0]) as img:
        assert img.mode == "P" and img.size == (160, 120)
        assert np.array(img).max() < 21


def test_two_ranks_in_a_dynamic_cluster_stay_identical(tmp_path):
    import mindspore as ms
    port = free_port()
    base = dict(MS_SCHED_HOST="127.0.0.1", MS_SCHED_PORT=port, MS_WORKER_NUM=2, RANK_SIZE=2,
                PSPNET_JOB_DIR=tmp_path / "job", PSPNET_JOB_ID="two")
    args = [sys.executable, "-m", "trainer.train", "--config", "smoke", *TINY, f"data_root={tmp_path / 'data'}",
            "synth_images=32", "epochs=1", "max_steps_per_epoch=4", "val_every=1"]
    # generate the data once, before the ranks race for it
    from trainer.data.synth import ensure_dataset
    from trainer.config import load_config
    ensure_dataset(load_config("smoke", {"data_root": str(tmp_path / "data"), "synth_images": "32"}), log=None)
    procs = {"sched": subprocess.Popen(args, cwd=tmp_path, env=clean_env(**base, MS_ROLE="MS_SCHED"),
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)}
    for r in (0, 1):
        procs[r] = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    env=clean_env(**base, MS_ROLE="MS_WORKER", MS_NODE_ID=r, RANK_ID=r, DEVICE_ID=r))
    out = {}
    try:
        for k, p in procs.items():
            out[k] = p.communicate(timeout=1200)[0]
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    for k, p in procs.items():
        assert p.returncode == 0, f"{k}:\n{out[k][-4000:]}"
    events = {r: [e for e in (parse_line(l) for l in out[r].splitlines() if l.startswith("@pspnet ")) if e]
              for r in (0, 1)}
    for r in (0, 1):
        start = events[r][0]
        assert (start["mode"], start["rank"], start["world_size"]) == ("dynamic", r, 2)
    # different shards: different losses on the first step
    assert losses(events[0])[1] != losses(events[1])[1]
    # validation is summed over ranks: both report the same mIoU
    ep = {r: [e for e in events[r] if e["event"] == "epoch"][-1] for r in (0, 1)}
    assert ep[0]["miou"] == ep[1]["miou"] and ep[0]["allacc"] == ep[1]["allacc"]
    ck = {r: list_checkpoints(tmp_path / "job" / "ckpt" / f"rank_{r}")[-1] for r in (0, 1)}
    # 4 steps: past the third, where a CPU dynamic cluster fed by mindspore.dataset stalls
    assert ck[0].global_step == ck[1].global_step == 4
    p0, p1 = (ms.load_checkpoint(str(ck[r].path)) for r in (0, 1))
    # weights and momentum buffers: everything but BatchNorm statistics and the per-rank dropout seed
    trainable = [k for k in p0 if "moving_" not in k and "dropout_seed" not in k]
    assert len(trainable) > 300 and any(k.startswith("moments.") for k in trainable)
    for k in trainable:
        assert np.array_equal(p0[k].asnumpy(), p1[k].asnumpy()), k
    # ... while the BatchNorm statistics (plain BN on CPU) saw different data
    assert any(not np.array_equal(p0[k].asnumpy(), p1[k].asnumpy()) for k in p0 if "moving_mean" in k)


def test_sigterm_stops_a_busy_rank_promptly_with_an_error_event(tmp_path):
    import time
    args = [sys.executable, "-m", "trainer.train", "--config", "smoke", *TINY, f"data_root={tmp_path / 'data'}",
            "synth_images=8", f"output_dir={tmp_path / 'out'}"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        for line in proc.stdout:                      # wait until the rank is busy (building / compiling)
            if line.startswith("@pspnet ") and parse_line(line)["event"] == "start":
                break
        time.sleep(3)
        proc.terminate()
        rest, _ = proc.communicate(timeout=120)       # a stuck rank would not end at all
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143
    errors = [e for e in (parse_line(l) for l in rest.splitlines()) if e and e["event"] == "error"]
    assert errors and "SIGTERM" in errors[0]["message"] and errors[0]["exit_code"] == 143


def test_sigterm_during_training_checkpoints_the_step_and_resume_continues(tmp_path):
    """A stop (launcher, scancel, preemption) after training began saves the step the rank was in and
    ends 143; resuming from the rank's checkpoint dir continues with the next step."""
    args = [sys.executable, "-m", "trainer.train", "--config", "smoke", *TINY, f"data_root={tmp_path / 'data'}",
            "synth_images=12", f"output_dir={tmp_path / 'out'}", "epochs=2", "max_steps_per_epoch=4",
            "ckpt_every=0", "ckpt_every_steps=0", "val_every=0"]
    env = clean_env(PSPNET_STOP_SAVE_S=300)        # generous: the machine may be loaded
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    before = []
    try:
        for line in proc.stdout:                      # stop once step 2 is done: the rank is in step 3
            ev = parse_line(line) if line.startswith("@pspnet ") else None
            if ev:
                before.append(ev)
                if ev["event"] == "step" and ev["global_step"] == 2:
                    break
        proc.terminate()
        rest, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-3000:]
    after = [e for e in (parse_line(l) for l in rest.splitlines() if l.startswith("@pspnet ")) if e]
    names = [e["event"] for e in after]
    assert "checkpoint" in names and names[-1] == "error", names
    assert after[-1]["exit_code"] == 143 and "SIGTERM" in after[-1]["message"]
    last_step = max(e["global_step"] for e in before + after if e["event"] == "step")
    saved = [e for e in after if e["event"] == "checkpoint"]
    assert [e["global_step"] for e in saved] == [last_step] and last_step in (2, 3)
    kept = list_checkpoints(tmp_path / "out" / "ckpt" / "rank_0")
    assert [k.global_step for k in kept] == [last_step] and kept[0].intact()

    proc, resumed = run(args[1:], tmp_path,
                        env=clean_env(PSPNET_RESUME=tmp_path / "out" / "ckpt" / "rank_0"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ev = [e for e in resumed if e["event"] == "resumed"]
    assert ev and ev[0]["global_step"] == last_step
    assert sorted(losses(resumed)) == list(range(last_step + 1, 9))
