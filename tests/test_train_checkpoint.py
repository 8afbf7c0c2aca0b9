"""Checkpoint files of one rank: atomic save + sidecar, keep-last-K, and the resume refusals."""
import json

import numpy as np
import pytest

from cluster.contracts.jobdir import list_checkpoints, read_sidecar
from trainer.checkpoint import (BEST_NAME, CheckpointManager, ResumeError, check_resume, checkpoint_dir,
                                load_into, resolve_resume_path, resume_point)

import mindspore as ms  # noqa: E402,F401
from mindspore import Tensor, nn  # noqa: E402


def tiny(value: float) -> nn.Cell:
    net = nn.Dense(3, 2)
    net.weight.set_data(Tensor(np.full((2, 3), value, np.float32)))
    return net


def save(mgr, value, epoch, step, **extra):
    meta = {"step_in_epoch": extra.get("done", 3), "steps_per_epoch": 3, "best_miou": extra.get("best", 0.5)}
    return mgr.save(tiny(value), epoch=epoch, global_step=step, extra=meta, kind=extra.get("kind", "last"))


def test_directory_follows_the_job(tmp_path):
    assert checkpoint_dir({}, 3, {"PSPNET_JOB_DIR": str(tmp_path)}) == tmp_path / "ckpt" / "rank_3"
    assert checkpoint_dir({"output_dir": str(tmp_path / "o")}, 0, {}) == tmp_path / "o" / "ckpt" / "rank_0"


def test_save_writes_sidecar_and_keeps_last_k(tmp_path):
    mgr = CheckpointManager(tmp_path, rank=0, config_sha="abc", keep=2)
    events = [save(mgr, float(i), epoch=i, step=3 * i) for i in range(1, 5)]
    kept = list_checkpoints(tmp_path)
    assert [k.global_step for k in kept] == [9, 12]
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())
    ev = events[-1]
    info = read_sidecar(ev["path"])
    assert info.sha256 == ev["sha256"] and info.bytes == ev["bytes"] and info.config_sha == "abc"
    assert info.sidecar["best_miou"] == 0.5 and info.intact()
    # the best copy is kept apart and never pruned nor picked for resume
    save(mgr, 9.0, epoch=4, step=12, kind="best")
    save(mgr, 5.0, epoch=5, step=15)
    assert (tmp_path / BEST_NAME).exists()
    assert [k.global_step for k in list_checkpoints(tmp_path)] == [12, 15]
    assert resolve_resume_path(str(tmp_path), 0).name == "pspnet_e0005_s00000015.ckpt"


def test_resume_point_mid_epoch_and_end_of_epoch(tmp_path):
    mgr = CheckpointManager(tmp_path, rank=0, config_sha="abc", keep=5)
    mid = save(mgr, 1.0, epoch=2, step=4, done=1)
    end = save(mgr, 1.0, epoch=2, step=6, done=3, best=0.25)
    p = resume_point(tmp_path / "x", read_sidecar(mid["path"]), steps_per_epoch=3)
    assert (p.epoch, p.skip_steps, p.global_step) == (2, 1, 4)
    p = resume_point(tmp_path / "x", read_sidecar(end["path"]), steps_per_epoch=3)
    assert (p.epoch, p.skip_steps, p.global_step, p.best_miou) == (3, 0, 6, 0.25)


def test_resume_refusals(tmp_path):
    mgr = CheckpointManager(tmp_path, rank=0, config_sha="abc", keep=5)
    ev = save(mgr, 2.0, epoch=1, step=3)
    path = tmp_path / "pspnet_e0001_s00000003.ckpt"
    assert check_resume(path, "abc").global_step == 3
    with pytest.raises(ResumeError, match="made with config abc"):
        check_resume(path, "other")
    with pytest.raises(ResumeError, match="no such file"):
        check_resume(tmp_path / "nope.ckpt", "abc")
    # a flipped byte: sha256 no longer matches the sidecar
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.chmod(0o600)
    path.write_bytes(bytes(data))
    with pytest.raises(ResumeError, match="sha256"):
        check_resume(path, "abc")
    # no sidecar: the save never completed
    (tmp_path / "pspnet_e0001_s00000003.ckpt.json").unlink()
    with pytest.raises(ResumeError, match="sidecar"):
        check_resume(path, "abc")
    assert ev["bytes"] == len(data)


def test_load_restores_values(tmp_path):
    mgr = CheckpointManager(tmp_path, rank=0, config_sha="abc", keep=1)
    ev = save(mgr, 7.0, epoch=1, step=1)
    net = tiny(0.0)
    assert load_into(net, ev["path"]) == []
    np.testing.assert_array_equal(net.weight.asnumpy(), np.full((2, 3), 7.0, np.float32))
    meta = json.loads((tmp_path / "pspnet_e0001_s00000001.ckpt.json").read_text())
    assert meta["kind"] == "last" and meta["rank"] == 0
