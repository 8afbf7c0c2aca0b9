"""Synthetic event streams, written exactly as the trainer writes them (EventWriter), for tests,
benchmarks and demos of the monitoring views without running MindSpore.

``write_synthetic_job(root, ranks=4, ...)`` makes a job directory (job.json + events/rank_<R>.jsonl)
of a job that trained ``epochs`` x ``steps_per_epoch`` steps per rank, with one rank optionally slower
(``slow_rank``/``slow_factor``) and optionally failed (``failed_rank``: an error event and exit code 1).
``step_lines(...)`` yields event lines (no marker) of one rank for bulk generation.
"""
from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

from cluster.contracts.jobdir import JobPaths, atomic_write_json
from cluster.contracts.events import MARKER, EventWriter


def _writer(job: str, rank: int, world_size: int, attempt: int, host: str, buf: io.StringIO) -> EventWriter:
    return EventWriter(job=job, attempt=attempt, rank=rank, world_size=world_size, device=rank, host=host,
                       stream=buf)


def rank_events(job: str, rank: int, world_size: int, *, epochs: int = 2, steps_per_epoch: int = 20,
                step_time_s: float = 0.1, jitter: float = 0.02, batch: int = 2, attempt: int = 0,
                host: str = "node0", t0: float = 1_700_000_000.0, fail_at_step: Optional[int] = None,
                finish: bool = True, seed: int = 0) -> str:
    """The event file text of one rank (lines without the marker, as events/rank_<R>.jsonl holds them)."""
    rng = random.Random(seed * 1000 + rank)
    buf = io.StringIO()
    w = _writer(job, rank, world_size, attempt, host, buf)
    ts = t0

    def emit(name: str, **fields: Any) -> None:
        ev = w.event(name, **fields)
        ev["ts"] = ts
        buf.write(_line(ev))

    emit("start", pid=1000 + rank, mode="dynamic", backend="cpu", config_sha="synthetic", mindspore="2.10.0")
    ts += 2.0
    emit("compiled", seconds=2.0)
    g = 0
    best = 0.0
    for epoch in range(1, epochs + 1):
        for step in range(1, steps_per_epoch + 1):
            g += 1
            st = step_time_s * (1.0 + jitter * (2 * rng.random() - 1))
            ts += st
            emit("step", epoch=epoch, step=step, global_step=g, steps_per_epoch=steps_per_epoch,
                 loss=2.0 / (1.0 + 0.05 * g) + 0.01 * rng.random(), step_time_s=st, images_per_s=batch / st,
                 lr=0.01 * (1 - g / (epochs * steps_per_epoch + 1)) ** 0.9)
            if fail_at_step is not None and g >= fail_at_step:
                emit("error", message="RuntimeError: synthetic failure", where="train.py:1")
                return buf.getvalue()
        miou = 0.2 + 0.5 * epoch / epochs - 0.01 * rank
        best = max(best, miou)
        emit("epoch", epoch=epoch, epoch_time_s=steps_per_epoch * step_time_s, mean_step_time_s=step_time_s,
             val_loss=1.0 / epoch, miou=miou, macc=miou + 0.1, allacc=0.9, best_miou=best)
    if finish:
        emit("finished", epochs=epochs, best_miou=best, wall_s=ts - t0)
    return buf.getvalue()


def _line(ev: Dict[str, Any]) -> str:
    from cluster.contracts.events import encode
    return encode(ev)[len(MARKER):] + "\n"


def write_synthetic_job(root: Any, ranks: int = 4, *, job: Optional[str] = None, epochs: int = 2,
                        steps_per_epoch: int = 20, step_time_s: float = 0.1, slow_rank: Optional[int] = None,
                        slow_factor: float = 1.5, failed_rank: Optional[int] = None, state: str = "succeeded",
                        finish: bool = True, t0: float = 1_700_000_000.0) -> Path:
    """A job directory with job.json and one event file per rank; returns its path."""
    root = Path(root)
    paths = JobPaths(root).make()
    job = job or root.name
    ranks_rec = {}
    for r in range(ranks):
        st = step_time_s * (slow_factor if r == slow_rank else 1.0)
        fail = (epochs * steps_per_epoch) // 2 if r == failed_rank else None
        text = rank_events(job, r, ranks, epochs=epochs, steps_per_epoch=steps_per_epoch, step_time_s=st,
                           fail_at_step=fail, finish=finish and fail is None, t0=t0)
        paths.rank_events(r).write_text(text)
        ranks_rec[str(r)] = {"pid": 1000 + r, "device": r, "host": "node0",
                             "exit_code": None if state == "running" else (1 if r == failed_rank else 0)}
    failure = None if failed_rank is None else {
        "rank": failed_rank, "name": f"rank_{failed_rank}", "reason": "exit", "exit_code": 1,
        "message": f"rank {failed_rank} exited with code 1"}
    # a job.json as the launcher writes it (cluster/contracts/jobjson.py), the parts monitoring reads
    atomic_write_json(paths.job_json, {
        "schema": 1, "job_id": job, "job_dir": str(root), "state": state, "spec": {"devices": str(ranks)},
        "world_size": ranks, "restarts": 0,
        "attempts": [{"attempt": 0, "state": state, "start": t0, "end": None if state == "running" else t0 + 1,
                      "ranks": ranks_rec, "failure": failure}],
    })
    return root


def step_lines(rank: int, n: int, world_size: int = 8, job: str = "bench", step_time_s: float = 0.1,
               steps_per_epoch: int = 1000, t0: float = 1_700_000_000.0, seed: int = 0) -> Iterator[str]:
    """``n`` event lines of one rank: mostly steps, an epoch event after each epoch (bulk generation)."""
    rng = random.Random(seed * 1000 + rank)
    w = EventWriter(job=job, attempt=0, rank=rank, world_size=world_size, device=rank, host="node0")
    ts = t0
    g = 0
    epoch = 1
    emitted = 0
    while emitted < n:
        g += 1
        step = (g - 1) % steps_per_epoch + 1
        st = step_time_s * (0.9 + 0.2 * rng.random())
        ts += st
        ev = w.event("step", epoch=epoch, step=step, global_step=g, steps_per_epoch=steps_per_epoch,
                     loss=1.0 / (1 + 0.001 * g), step_time_s=st, images_per_s=16 / st, lr=0.01)
        ev["ts"] = ts
        yield _line(ev)
        emitted += 1
        if step == steps_per_epoch and emitted < n:
            ev = w.event("epoch", epoch=epoch, epoch_time_s=steps_per_epoch * step_time_s,
                         mean_step_time_s=step_time_s, val_loss=0.3, miou=0.5, macc=0.6, allacc=0.9, best_miou=0.5)
            ev["ts"] = ts
            yield _line(ev)
            emitted += 1
            epoch += 1
