"""Checkpoints of one rank: atomic save + sidecar, keep-last-K, best copy, and checked resume.

Where: ``$PSPNET_JOB_DIR/ckpt/rank_<R>/`` under a job, else ``<output_dir>/ckpt/rank_<R>/`` (output_dir
defaults to ``./runs/single``).  Names come from :func:`cluster.contracts.jobdir.checkpoint_name`
(``pspnet_e0002_s00000012.ckpt``); the best checkpoint so far is ``pspnet_best.ckpt`` (sidecar kind
``best``, never pruned, never picked for resume by the orchestrator).

A save writes the MindSpore checkpoint to a temporary name in the same directory, renames it into
place, then writes the sidecar (``cluster.contracts.jobdir.write_sidecar``): a checkpoint counts only once its
sidecar exists.  The checkpoint holds the whole training cell: weights, BatchNorm statistics, the
optimizer's momentum buffers and its ``global_step`` (which is also the learning-rate position).  The
sidecar adds what the loop needs to continue: epoch, steps done in that epoch, steps per epoch,
best mIoU, world size and the config sha.

Resume refuses (:class:`ResumeError`, the trainer exits 2) a file without sidecar, a file whose sha256
or size differs from its sidecar, and a checkpoint made under another config (``config_sha``).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from cluster.contracts.env import RankEnv
from cluster.contracts.jobdir import (CheckpointInfo, JobPaths, checkpoint_name, list_checkpoints, read_sidecar,
                            sha256_file, sidecar_path, write_sidecar)

BEST_NAME = "pspnet_best.ckpt"


class ResumeError(RuntimeError):
    """A checkpoint that must not be resumed from (worded for the user)."""


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run continues: the next epoch to run and the steps of it already done."""
    path: Path
    epoch: int              # epoch to run next (1-based)
    skip_steps: int         # steps of that epoch already done
    global_step: int
    best_miou: float
    info: CheckpointInfo


def checkpoint_dir(cfg: Mapping[str, Any], rank: int, env: Optional[Mapping[str, str]] = None) -> Path:
    job = RankEnv.from_env(env).job_dir
    root = Path(job) if job else Path(cfg.get("output_dir") or "runs/single")
    return JobPaths(root).rank_ckpt_dir(rank)


def _save_atomic(obj: Any, final: Path) -> float:
    """ms.save_checkpoint to a temporary file in the same directory, then rename; returns seconds."""
    import mindspore as ms
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{os.getpid()}-{final.name}")
    t0 = time.perf_counter()
    try:
        ms.save_checkpoint(obj, str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise
    return time.perf_counter() - t0


class CheckpointManager:
    """Saves the checkpoints of one rank and prunes old ones."""

    def __init__(self, directory: Path, *, rank: int, config_sha: str, keep: int) -> None:
        self.dir = Path(directory)
        self.rank = int(rank)
        self.config_sha = config_sha
        self.keep = max(1, int(keep))

    def save(self, cell: Any, *, epoch: int, global_step: int, extra: Dict[str, Any],
             kind: str = "last") -> Dict[str, Any]:
        """Save ``cell`` (the training cell); returns the fields of the contract's checkpoint event."""
        path = self.dir / (BEST_NAME if kind == "best" else checkpoint_name(epoch, global_step))
        if kind == "best":   # the old best stops counting before it is replaced
            try:
                sidecar_path(path).unlink()
            except OSError:
                pass
        seconds = _save_atomic(cell, path)
        t0 = time.perf_counter()
        info = write_sidecar(path, epoch=epoch, global_step=global_step, config_sha=self.config_sha,
                             rank=self.rank, kind=kind, extra=extra)
        seconds += time.perf_counter() - t0
        if kind == "last":
            self.prune()
        return {"path": str(path), "epoch": epoch, "global_step": global_step, "bytes": info.bytes,
                "seconds": round(seconds, 3), "sha256": info.sha256, "kind": kind}

    def prune(self) -> None:
        """Delete the oldest periodic checkpoints beyond ``keep`` (sidecar first: it stops counting)."""
        found = list_checkpoints(self.dir, kind="last")
        for old in found[:-self.keep]:
            for p in (old.sidecar_path, old.path):
                try:
                    p.unlink()
                except OSError:
                    pass


def resolve_resume_path(path: str, rank: int) -> Path:
    """A checkpoint file, or a directory: a rank dir, a job's ckpt dir or a job dir (newest periodic one)."""
    p = Path(os.path.expanduser(path))
    if p.is_dir():
        for d in (p / "ckpt" / f"rank_{rank}", p / f"rank_{rank}", p):
            found = list_checkpoints(d, kind="last")
            if found:
                return found[-1].path
        raise ResumeError(f"--resume {path}: no checkpoint with a sidecar found in that directory")
    return p


def check_resume(path: Path, config_sha: str) -> CheckpointInfo:
    """The sidecar of a checkpoint fit to resume from, or ResumeError saying what is wrong and what to do."""
    if not path.is_file():
        raise ResumeError(f"resume checkpoint {path}: no such file")
    info = read_sidecar(path)
    if info is None:
        raise ResumeError(f"resume checkpoint {path}: its sidecar {sidecar_path(path).name} is missing or "
                          f"unreadable, so the checkpoint never completed; resume from an older one")
    size = path.stat().st_size
    if size != info.bytes or sha256_file(path) != info.sha256:
        raise ResumeError(f"resume checkpoint {path}: sha256/size do not match its sidecar (file corrupted or "
                          f"torn); resume from an older checkpoint")
    if info.config_sha != config_sha:
        raise ResumeError(f"resume checkpoint {path} was made with config {info.config_sha}, this run's config is "
                          f"{config_sha}: the model or optimisation settings differ; resume with the original "
                          f"config and overrides (run-only keys such as data_root or val_every may change)")
    return info


def resume_point(path: Path, info: CheckpointInfo, steps_per_epoch: int) -> ResumePoint:
    meta = info.sidecar or {}
    done = int(meta.get("step_in_epoch", meta.get("steps_per_epoch", steps_per_epoch)))
    epoch = info.epoch
    if done >= steps_per_epoch:
        epoch, done = epoch + 1, 0
    best = meta.get("best_miou")
    return ResumePoint(path=path, epoch=epoch, skip_steps=done, global_step=info.global_step,
                       best_miou=float(best) if best is not None else 0.0, info=info)


def load_into(cell: Any, path: Path) -> list:
    """Load a checkpoint into the training cell; returns the names of the cell's parameters it lacked."""
    import mindspore as ms
    params = ms.load_checkpoint(str(path))
    missing = ms.load_param_into_net(cell, params, strict_load=True)
    if isinstance(missing, tuple):   # newer MindSpore returns (param_not_load, ckpt_not_load)
        missing = missing[0]
    return list(missing or [])
