"""The job directory of the contract, atomic file writes, and checkpoint sidecars.

Layout (``runs/<job-id>/`` by default)::

    job.json                 resolved spec + state + one record per attempt (atomic)
    rank_table.json          when the job uses an HCCL rank table
    logs/rank_<R>.log        everything a rank printed;  logs/scheduler.log
    events/rank_<R>.jsonl    the rank's event stream, marker removed
    ckpt/rank_<R>/           checkpoints, each ``<name>.ckpt`` with a sidecar ``<name>.ckpt.json``
    report/                  end-of-job summary and plots
    job.sbatch               the batch script `submit` wrote (Slurm); it may precede job.json
    slurm/                   Slurm: slurm.json (the Slurm job), attempt_<N>.json (each task's rank),
                             srun.log, batch-<id>.out (the batch script's output)

A checkpoint counts only once its sidecar exists; both are written atomically, sidecar last.
This module is shared by the trainer (writes checkpoints), the orchestrator (picks the newest
checkpoint every rank holds) and monitoring (reads logs and events); it imports nothing upward.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Union

PathLike = Union[str, os.PathLike]

JOB_JSON = "job.json"
RANK_TABLE = "rank_table.json"
LOGS = "logs"
EVENTS = "events"
CKPT = "ckpt"
REPORT = "report"
SBATCH = "job.sbatch"
SLURM = "slurm"
SIDECAR_SUFFIX = ".json"


class JobPaths:
    """Names of everything inside one job directory."""

    def __init__(self, root: PathLike) -> None:
        self.root = Path(root)

    job_json = property(lambda self: self.root / JOB_JSON)
    rank_table = property(lambda self: self.root / RANK_TABLE)
    logs_dir = property(lambda self: self.root / LOGS)
    events_dir = property(lambda self: self.root / EVENTS)
    ckpt_dir = property(lambda self: self.root / CKPT)
    report_dir = property(lambda self: self.root / REPORT)
    scheduler_log = property(lambda self: self.root / LOGS / "scheduler.log")

    def rank_log(self, rank: int) -> Path:
        return self.root / LOGS / f"rank_{int(rank)}.log"

    def rank_events(self, rank: int) -> Path:
        return self.root / EVENTS / f"rank_{int(rank)}.jsonl"

    def rank_ckpt_dir(self, rank: int) -> Path:
        return self.root / CKPT / f"rank_{int(rank)}"

    def make(self) -> "JobPaths":
        for d in (self.logs_dir, self.events_dir, self.ckpt_dir, self.report_dir):
            d.mkdir(parents=True, exist_ok=True)
        return self


# ---------------------------------------------------------------- atomic writes

def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_json(path: PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- checkpoints

@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint as its sidecar describes it."""
    path: Path
    epoch: int
    global_step: int
    sha256: str
    config_sha: str
    bytes: int
    rank: Optional[int] = None
    kind: str = "last"          # "last" (periodic, used for resume) or "best"
    sidecar: Dict[str, Any] = None  # type: ignore[assignment]

    @property
    def sidecar_path(self) -> Path:
        return sidecar_path(self.path)

    def intact(self) -> bool:
        """The file is a regular file with the recorded size and sha256."""
        try:
            st = os.stat(self.path)
            if not stat.S_ISREG(st.st_mode) or st.st_size != self.bytes:
                return False
            return sha256_file(self.path) == self.sha256
        except OSError:
            return False


def sidecar_path(ckpt_path: PathLike) -> Path:
    p = Path(ckpt_path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def checkpoint_name(epoch: int, global_step: int) -> str:
    return f"pspnet_e{int(epoch):04d}_s{int(global_step):08d}.ckpt"


_NAME_RE = re.compile(r"^pspnet_e(\d+)_s(\d+)\.ckpt$")


def write_sidecar(ckpt_path: PathLike, *, epoch: int, global_step: int, config_sha: str,
                  rank: Optional[int] = None, kind: str = "last", extra: Optional[Dict[str, Any]] = None,
                  sha256: Optional[str] = None) -> CheckpointInfo:
    """Hash a finished checkpoint file and write its sidecar atomically (call after the .ckpt is in place)."""
    ckpt_path = Path(ckpt_path)
    digest = sha256 or sha256_file(ckpt_path)
    size = ckpt_path.stat().st_size
    meta: Dict[str, Any] = {
        "file": ckpt_path.name, "epoch": int(epoch), "global_step": int(global_step),
        "sha256": digest, "bytes": size, "config_sha": config_sha, "rank": rank, "kind": kind,
    }
    if extra:
        meta.update(extra)
    atomic_write_json(sidecar_path(ckpt_path), meta)
    return _info(ckpt_path, meta)


def _info(ckpt_path: Path, meta: Dict[str, Any]) -> CheckpointInfo:
    for key in ("epoch", "global_step", "bytes"):
        v = meta[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v < 0:
            raise ValueError(f"{key} {v!r} is not a whole number >= 0")
    return CheckpointInfo(path=ckpt_path, epoch=int(meta["epoch"]), global_step=int(meta["global_step"]),
                          sha256=str(meta["sha256"]), config_sha=str(meta.get("config_sha", "")),
                          bytes=int(meta["bytes"]), rank=meta.get("rank"), kind=str(meta.get("kind", "last")),
                          sidecar=meta)


def is_regular_file(path: PathLike) -> bool:
    """Whether ``path`` is a regular file (opening a FIFO or a device put there would block or worse)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _warn(msg: str) -> None:
    logging.getLogger("pspnet.checkpoints").warning("warning: %s", msg)


def read_sidecar(ckpt_path: PathLike) -> Optional[CheckpointInfo]:
    """The checkpoint's info, or None when the sidecar is missing or unreadable (checkpoint not counted).

    A sidecar or checkpoint that is not a regular file, or whose numbers are not finite integers, is
    skipped with a warning on stderr: a resume never blocks or dies on a damaged checkpoint dir.
    """
    ckpt_path = Path(ckpt_path)
    side = sidecar_path(ckpt_path)
    if not side.exists():
        return None
    if not is_regular_file(side) or not is_regular_file(ckpt_path):
        _warn(f"{ckpt_path}: skipped (it or its sidecar is not a regular file)")
        return None
    try:
        with open(side, "rb") as fh:
            meta = json.loads(fh.read(1 << 20).decode("utf-8"))
        return _info(ckpt_path, meta)
    except OSError:
        return None
    except (ValueError, KeyError, TypeError, OverflowError, AttributeError) as exc:
        _warn(f"{side}: skipped (damaged metadata: {type(exc).__name__}: {exc})")
        return None


def list_checkpoints(rank_dir: PathLike, kind: Optional[str] = "last") -> List[CheckpointInfo]:
    """Checkpoints of one rank that have a sidecar, oldest first (by global step)."""
    rank_dir = Path(rank_dir)
    if not rank_dir.is_dir():
        return []
    found = []
    for p in rank_dir.glob("*.ckpt"):
        info = read_sidecar(p)
        if info is not None and (kind is None or info.kind == kind):
            found.append(info)
    found.sort(key=lambda i: (i.global_step, i.epoch))
    return found


def newest_common_checkpoint(job_dir: PathLike, ranks: Iterable[int],
                             verify: bool = True) -> Optional[Dict[int, CheckpointInfo]]:
    """The newest global step for which every rank holds an intact checkpoint with one config.

    Returns ``{rank: CheckpointInfo}`` or None when there is no such step.  With ``verify`` the
    sha256 of every candidate is checked, so a torn or corrupted file is skipped, not resumed from.
    """
    paths = JobPaths(job_dir)
    ranks = list(ranks)
    per_rank: Dict[int, Dict[int, CheckpointInfo]] = {}
    for r in ranks:
        per_rank[r] = {i.global_step: i for i in list_checkpoints(paths.rank_ckpt_dir(r))}
    if not ranks:
        return None
    common = set.intersection(*(set(d) for d in per_rank.values())) if per_rank else set()
    for step in sorted(common, reverse=True):
        chosen = {r: per_rank[r][step] for r in ranks}
        if len({c.config_sha for c in chosen.values()}) != 1:
            continue
        if verify and not all(c.intact() for c in chosen.values()):
            continue
        return chosen
    return None


# ---------------------------------------------------------------- one owner per job dir

LOCK_FILE = "launcher.lock"
PID_FILE = "launcher.pid"
#: written by `stop` before it signals the launcher, so the launcher names the stop's cause
STOP_REQUEST_FILE = "stop.request"
#: files the launcher itself (or `submit`, for a Slurm batch job) puts into a job dir before job.json exists
OWN_FILES = (LOCK_FILE, PID_FILE, STOP_REQUEST_FILE, ".write-test", SBATCH, SLURM)


class JobDirBusy(RuntimeError):
    """Another launcher owns the job dir; ``owner`` is what its launcher.pid says (or None)."""

    def __init__(self, job_dir: PathLike, owner: Optional["LauncherId"]) -> None:
        self.job_dir = Path(job_dir)
        self.owner = owner
        who = f"launcher pid {owner.pid} on {owner.host}" if owner else "another launcher"
        super().__init__(f"{job_dir}: the job is running ({who} holds {LOCK_FILE}); "
                         f"`pspnet-cluster stop {job_dir}` first, or wait for it to end")


def process_start_time(pid: int) -> Optional[float]:
    """When process ``pid`` started (seconds since the epoch), or None when there is no such process."""
    try:
        import psutil
        return float(psutil.Process(int(pid)).create_time())
    except Exception:  # noqa: BLE001 - no such process, no permission, no psutil: nothing to trust
        return None


@dataclass(frozen=True)
class LauncherId:
    """Who owns a job dir: a pid means nothing without its start time and host (pids are reused)."""
    pid: int
    start: float
    host: str

    @classmethod
    def current(cls) -> "LauncherId":
        import socket
        pid = os.getpid()
        return cls(pid, process_start_time(pid) or 0.0, socket.gethostname())

    def to_dict(self) -> Dict[str, Any]:
        return {"pid": self.pid, "start": self.start, "host": self.host}

    @classmethod
    def from_dict(cls, d: Any) -> Optional["LauncherId"]:
        try:
            return cls(int(d["pid"]), float(d["start"]), str(d["host"]))
        except (TypeError, KeyError, ValueError):
            return None

    def is_here(self) -> bool:
        import socket
        return self.host == socket.gethostname()

    def alive(self) -> bool:
        """The very process that wrote this record still runs (same host, pid and start time)."""
        if not self.is_here() or self.pid <= 1:
            return False
        started = process_start_time(self.pid)
        return started is not None and abs(started - self.start) < 0.05


def write_launcher(job_dir: PathLike, who: Optional[LauncherId]) -> None:
    """Record (or with None remove) the owner's identity in ``launcher.pid``."""
    path = Path(job_dir) / PID_FILE
    if who is None:
        try:
            path.unlink()
        except OSError:
            pass
    else:
        atomic_write_json(path, who.to_dict())


def read_launcher(job_dir: PathLike) -> Optional[LauncherId]:
    try:
        return LauncherId.from_dict(json.loads((Path(job_dir) / PID_FILE).read_text()))
    except (OSError, ValueError):
        return None


class JobLock:
    """An exclusive ``flock`` on ``launcher.lock`` held for the life of launch/resume.

    The kernel drops it when the owner exits however it exits (SIGKILL included), so the lock, not
    a pid file, answers "is this job running".  Readers (``job_running``) take a shared lock for an
    instant; ``acquire`` retries for ``wait`` seconds so such a reader is never mistaken for an owner.
    """

    def __init__(self, job_dir: PathLike) -> None:
        self.job_dir = Path(job_dir)
        self.path = self.job_dir / LOCK_FILE
        self._fd: Optional[int] = None

    def acquire(self, wait: float = 1.0) -> "JobLock":
        import fcntl
        import time
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise JobDirBusy(self.job_dir, read_launcher(self.job_dir)) from None
                time.sleep(0.05)
        self._fd = fd
        return self

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)    # closing drops the flock
            except OSError:
                pass
            self._fd = None

    def __enter__(self) -> "JobLock":
        return self if self.held else self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def job_running(job_dir: PathLike) -> bool:
    """Whether a launcher holds the job dir's lock right now."""
    import fcntl
    try:
        fd = os.open(Path(job_dir) / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
