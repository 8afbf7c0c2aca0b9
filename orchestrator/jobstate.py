"""The launcher's in-memory ``job.json`` (schema: ``cluster/contracts/jobjson.py``), saved atomically.

``launcher.lock`` next to it is flock-ed by the launcher for its whole life (``job_running``);
``launcher.pid`` holds the owner's pid, start time and host (``stop`` signals it only when all three
match a live process).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from cluster.contracts.jobdir import JOB_JSON, LauncherId, atomic_write_json, write_launcher
from cluster.contracts.jobjson import SCHEMA, load_job_json
from cluster.contracts.states import AttemptState, JobState as State


class JobState:
    """The in-memory job.json; ``save()`` writes it atomically."""

    def __init__(self, job_dir: Path, data: Dict[str, Any]) -> None:
        self.job_dir = Path(job_dir)
        self.data = data

    # ------------------------------------------------------------ construction
    @classmethod
    def new(cls, spec: Dict[str, Any], world_size: int, config_sha: Optional[str] = None) -> "JobState":
        now = time.time()
        data = {"schema": SCHEMA, "job_id": spec["job_id"], "job_dir": spec["job_dir"], "state": State.PENDING,
                "created": now, "updated": now, "launcher": None, "spec": spec, "world_size": world_size,
                "config_sha": config_sha, "restarts": 0, "exit_code": None, "message": None, "attempts": []}
        return cls(Path(spec["job_dir"]), data)

    @classmethod
    def load(cls, job_dir: Any) -> "JobState":
        """Raises JobJsonError (naming the file and the field) unless job.json follows the schema."""
        return cls(Path(job_dir), dict(load_job_json(Path(job_dir) / JOB_JSON)))

    # ------------------------------------------------------------ accessors
    @property
    def state(self) -> State:
        return State(self.data["state"])

    @property
    def attempts(self) -> List[Dict[str, Any]]:
        return self.data.setdefault("attempts", [])

    @property
    def last_attempt(self) -> Optional[Dict[str, Any]]:
        return self.attempts[-1] if self.attempts else None

    def next_attempt_number(self) -> int:
        return (self.attempts[-1]["attempt"] + 1) if self.attempts else 0

    # ------------------------------------------------------------ updates
    def set_state(self, state: State, save: bool = True) -> None:
        self.data["state"] = State(state)
        if save:
            self.save()

    def set_launcher(self, who: Optional[LauncherId]) -> None:
        """Record the owner (this process: ``LauncherId.current()``), or None when it ends."""
        self.data["launcher"] = None if who is None else who.to_dict()
        write_launcher(self.job_dir, who)
        self.save()

    def begin_attempt(self, record: Dict[str, Any]) -> Dict[str, Any]:
        record.setdefault("state", AttemptState.RUNNING)
        record.setdefault("start", time.time())
        record.setdefault("end", None)
        record.setdefault("failure", None)
        record.setdefault("stop_reason", None)
        record.setdefault("group_down_s", None)
        self.attempts.append(record)
        self.data["restarts"] = len(self.attempts) - 1
        self.save()
        return record

    def end(self, state: State, exit_code: int, message: str) -> None:
        self.data["exit_code"] = int(exit_code)
        self.data["message"] = message
        self.set_state(state, save=False)
        self.set_launcher(None)

    def save(self) -> None:
        self.data["updated"] = time.time()
        path = self.job_dir / JOB_JSON
        try:
            atomic_write_json(path, self.data)
        except PermissionError:
            # a job dir made read-only can still have its existing job.json rewritten in place: a
            # final state written non-atomically beats a job.json stuck at "running"
            try:
                with open(path, "r+", encoding="utf-8") as fh:
                    fh.write(json.dumps(self.data, indent=2) + "\n")
                    fh.truncate()
            except OSError:
                pass
            else:
                return
            raise
