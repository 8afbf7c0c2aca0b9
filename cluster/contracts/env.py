"""The environment of one rank: what the launcher sets and what the trainer (or any program) reads.

``RankEnv`` is the single list of these variables.  The launcher builds one per process and passes
``to_env()``; the trainer, the event writer and ``stop`` read it back with ``RankEnv.from_env()``.

Variables (all optional at this level; which ones a mode needs is checked by the reader that joins
the world, ``trainer/world.py``)::

    RANK_ID RANK_SIZE DEVICE_ID          the rank, the world size, the accelerator index on its host
    RANK_TABLE_FILE                      HCCL rank table (Ascend, rank-table mode)
    MS_ROLE MS_SCHED_HOST MS_SCHED_PORT  MindSpore dynamic cluster: MS_WORKER / MS_SCHED, the
    MS_WORKER_NUM MS_NODE_ID             scheduler address, the number of workers, this worker's id
    PSPNET_JOB_ID PSPNET_JOB_DIR         the job and its directory (events, checkpoints)
    PSPNET_ATTEMPT                       attempt number (0 first, +1 per restart or resume)
    PSPNET_BACKEND PSPNET_HOST           cpu / ascend / gpu; the host name the rank reports
    PSPNET_LOCAL_RANK                    index of the rank among the ranks of its host
    PSPNET_RESUME                        checkpoint this rank resumes from
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any, Dict, Mapping, Optional

MS_WORKER = "MS_WORKER"
MS_SCHED = "MS_SCHED"
ROLES = (MS_WORKER, MS_SCHED)


class RankEnvError(ValueError):
    """A variable of the rank environment holds a value of the wrong kind (worded for the user)."""


# field name -> (variable, kind); kind "int" is parsed, "str" is kept as given (stripped)
VARIABLES: Dict[str, tuple] = {
    "rank": ("RANK_ID", "int"),
    "rank_size": ("RANK_SIZE", "int"),
    "device_id": ("DEVICE_ID", "int"),
    "rank_table_file": ("RANK_TABLE_FILE", "str"),
    "role": ("MS_ROLE", "str"),
    "sched_host": ("MS_SCHED_HOST", "str"),
    "sched_port": ("MS_SCHED_PORT", "int"),
    "worker_num": ("MS_WORKER_NUM", "int"),
    "node_id": ("MS_NODE_ID", "int"),
    "job_id": ("PSPNET_JOB_ID", "str"),
    "job_dir": ("PSPNET_JOB_DIR", "str"),
    "attempt": ("PSPNET_ATTEMPT", "int"),
    "backend": ("PSPNET_BACKEND", "str"),
    "host": ("PSPNET_HOST", "str"),
    "local_rank": ("PSPNET_LOCAL_RANK", "int"),
    "resume": ("PSPNET_RESUME", "str"),
}
#: Every variable name of the contract.
NAMES = tuple(v for v, _ in VARIABLES.values())


@dataclass(frozen=True)
class RankEnv:
    """One process's place in a job; ``None`` means the variable is not set."""
    rank: Optional[int] = None
    rank_size: Optional[int] = None
    device_id: Optional[int] = None
    rank_table_file: Optional[str] = None
    role: Optional[str] = None
    sched_host: Optional[str] = None
    sched_port: Optional[int] = None
    worker_num: Optional[int] = None
    node_id: Optional[int] = None
    job_id: Optional[str] = None
    job_dir: Optional[str] = None
    attempt: Optional[int] = None
    backend: Optional[str] = None
    host: Optional[str] = None
    local_rank: Optional[int] = None
    resume: Optional[str] = None

    def __post_init__(self) -> None:
        for f in fields(self):
            var, kind = VARIABLES[f.name]
            value = getattr(self, f.name)
            if value is None:
                continue
            if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise RankEnvError(f"{var}={value!r}: must be an integer")
            if kind == "str" and not isinstance(value, str):
                raise RankEnvError(f"{var}={value!r}: must be a string")
        if self.role is not None and self.role not in ROLES:
            raise RankEnvError(f"MS_ROLE={self.role!r}: expected {' or '.join(ROLES)} (MindSpore dynamic cluster)")
        if self.sched_port is not None and not 0 < self.sched_port < 65536:
            raise RankEnvError(f"MS_SCHED_PORT={self.sched_port}: must be a TCP port (1..65535)")
        for name in ("rank_size", "worker_num"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise RankEnvError(f"{VARIABLES[name][0]}={value}: must be at least 1")
        for name in ("rank", "device_id", "node_id", "attempt", "local_rank"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise RankEnvError(f"{VARIABLES[name][0]}={value}: must not be negative")

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "RankEnv":
        """Read ``env`` (default ``os.environ``); an empty value counts as unset.  Raises RankEnvError."""
        env = os.environ if env is None else env
        values: Dict[str, Any] = {}
        for name, (var, kind) in VARIABLES.items():
            raw = env.get(var)
            if raw is None or str(raw).strip() == "":
                continue
            text = str(raw).strip()
            if kind == "int":
                try:
                    values[name] = int(text)
                except ValueError:
                    raise RankEnvError(f"environment variable {var}={raw!r} is not an integer") from None
            else:
                values[name] = text
        return cls(**values)

    def to_env(self) -> Dict[str, str]:
        """The variables to set for the process.  A rank without an accelerator gets ``DEVICE_ID=""``
        so that a DEVICE_ID inherited from the launcher's own environment does not reach it."""
        out: Dict[str, str] = {}
        for name, (var, _) in VARIABLES.items():
            value = getattr(self, name)
            if value is not None:
                out[var] = str(value)
        if self.rank is not None and self.device_id is None:
            out["DEVICE_ID"] = ""
        return out

    def with_(self, **changes: Any) -> "RankEnv":
        return replace(self, **changes)

    @property
    def is_scheduler(self) -> bool:
        return self.role == MS_SCHED
