"""``job.json``: the state of a job, written atomically by the launcher and read by everyone else.

Schema (version 1; readers ignore unknown keys)::

    {
      "schema": 1,
      "job_id": "20261126-101500-1234",
      "job_dir": "/abs/path/runs/20261126-101500-1234",
      "state": "pending" | "running" | "restarting" | "succeeded" | "failed" | "stopped",
      "created": 1764151000.1,  "updated": 1764151042.7,      # unix seconds
      "launcher": {"pid": 4242, "host": "node1", "start": 1764151000.1},   # the owner (pid + start time + host)
      "spec": {... JobSpec.to_dict(): devices, backend, mode, config, overrides, cmd, hosts,
               max_restarts, hang_timeout, startup_timeout, grace, metrics_port, ...},
      "world_size": 2,
      "config_sha": "ab12..." | null,      # trainer config identity (null with --cmd)
      "restarts": 1,                       # len(attempts) - 1
      "exit_code": 0 | 1 | 130 | null,     # the launcher's exit code once it ended
      "message": "human summary of the end state" | null,
      "attempts": [
        {
          "attempt": 0,                      # PSPNET_ATTEMPT of its ranks
          "state": "running" | "succeeded" | "failed" | "stopped" | "lost",   # lost: launcher was killed
          "start": 1764151000.2, "end": 1764151020.9 | null,
          "mode": "dynamic" | "ranktable",
          "rendezvous": {"host": "127.0.0.1", "port": 40123} | null,
          "resume": {"epoch": 1, "global_step": 6, "paths": {"0": ".../rank_0/x.ckpt", ...}} | null,
          "ranks": {"0": {"pid": 4300, "device": 0, "host": "localhost", "exit_code": 0 | -9 | null,
                          "signal": "SIGKILL" | null}, ...,
                    "scheduler": {...same...}},
          "failure": null | {
              "rank": 1 | null,              # null: the scheduler or the launcher itself
              "name": "rank_1" | "scheduler",
              "reason": "exit" | "signal" | "hang" | "startup" | "launch" | "launcher",
              "exit_code": 3 | -9 | null, "signal": "SIGKILL" | null,
              "at": 1764151010.4,            # when the launcher saw it
              "message": "rank 1 exited with code 3",
              "last_lines": ["...", "..."]   # the rank's last log lines
          },
          "stop_reason": "SIGINT" | "SIGTERM" | "stop command" | null,
          "group_down_s": 0.08 | null        # failure seen -> every process of the attempt gone
        }
      ]
    }

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

SCHEMA = 1
STATES = ("pending", "running", "restarting", "succeeded", "failed", "stopped")
FINAL_STATES = ("succeeded", "failed", "stopped")


class JobStateError(ValueError):
    """A job dir without a readable job.json."""


class JobState:
    """The in-memory job.json; ``save()`` writes it atomically."""

    def __init__(self, job_dir: Path, data: Dict[str, Any]) -> None:
        self.job_dir = Path(job_dir)
        self.data = data

    # ------------------------------------------------------------ construction
    @classmethod
    def new(cls, spec: Dict[str, Any], world_size: int, config_sha: Optional[str] = None) -> "JobState":
        now = time.time()
        data = {"schema": SCHEMA, "job_id": spec["job_id"], "job_dir": spec["job_dir"], "state": "pending",
                "created": now, "updated": now, "launcher": None, "spec": spec, "world_size": world_size,
                "config_sha": config_sha, "restarts": 0, "exit_code": None, "message": None, "attempts": []}
        return cls(Path(spec["job_dir"]), data)

    @classmethod
    def load(cls, job_dir: Any) -> "JobState":
        job_dir = Path(job_dir)
        path = job_dir / JOB_JSON
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise JobStateError(f"{job_dir}: not a job dir (no {JOB_JSON}); "
                                "`pspnet-cluster status` lists the jobs under ./runs") from None
        except (OSError, ValueError) as exc:
            raise JobStateError(f"{path}: unreadable: {exc}") from None
        if not isinstance(data, dict) or "spec" not in data:
            raise JobStateError(f"{path}: not a pspnet-cluster job.json (no 'spec')")
        return cls(job_dir, data)

    # ------------------------------------------------------------ accessors
    @property
    def state(self) -> str:
        return str(self.data.get("state"))

    @property
    def attempts(self) -> List[Dict[str, Any]]:
        return self.data.setdefault("attempts", [])

    @property
    def last_attempt(self) -> Optional[Dict[str, Any]]:
        return self.attempts[-1] if self.attempts else None

    def next_attempt_number(self) -> int:
        return (self.attempts[-1]["attempt"] + 1) if self.attempts else 0

    # ------------------------------------------------------------ updates
    def set_state(self, state: str, save: bool = True) -> None:
        assert state in STATES, state
        self.data["state"] = state
        if save:
            self.save()

    def set_launcher(self, who: Optional[LauncherId]) -> None:
        """Record the owner (this process: ``LauncherId.current()``), or None when it ends."""
        self.data["launcher"] = None if who is None else who.to_dict()
        write_launcher(self.job_dir, who)
        self.save()

    def begin_attempt(self, record: Dict[str, Any]) -> Dict[str, Any]:
        record.setdefault("state", "running")
        record.setdefault("start", time.time())
        record.setdefault("end", None)
        record.setdefault("failure", None)
        record.setdefault("stop_reason", None)
        record.setdefault("group_down_s", None)
        self.attempts.append(record)
        self.data["restarts"] = len(self.attempts) - 1
        self.save()
        return record

    def end(self, state: str, exit_code: int, message: str) -> None:
        self.data["exit_code"] = exit_code
        self.data["message"] = message
        self.set_state(state, save=False)
        self.set_launcher(None)

    def save(self) -> None:
        self.data["updated"] = time.time()
        atomic_write_json(self.job_dir / JOB_JSON, self.data)
