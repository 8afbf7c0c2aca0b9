"""``job.json``: the state of a job, written atomically by its launcher and read by every other command.

The schema as types (``JobRecord``, ``AttemptRecord``, ``RankRecord``, ``FailureRecord``; version
``SCHEMA``; readers ignore unknown keys) and ``load_job_json``, which checks a file against it and
raises ``JobJsonError`` naming the file and the field, so that ``status``, ``logs``, ``stop`` and
``resume`` answer a damaged or foreign job.json with a clear message and exit code 2::

    {
      "schema": 1,
      "job_id": "20261126-101500-1234",
      "job_dir": "/abs/path/runs/20261126-101500-1234",
      "state": JobState,
      "created": 1764151000.1,  "updated": 1764151042.7,      # unix seconds
      "launcher": {"pid": 4242, "host": "node1", "start": 1764151000.1} | null,   # the owner (pid + start time)
      "spec": {... JobSpec.to_dict() ...},
      "world_size": 2,
      "config_sha": "ab12..." | null,      # trainer config identity (null with --cmd)
      "restarts": 1,                       # len(attempts) - 1
      "exit_code": ExitCode | null,        # the launcher's exit code once it ended
      "message": "human summary of the end state" | null,
      "attempts": [
        {
          "attempt": 0,                      # PSPNET_ATTEMPT of its ranks
          "state": AttemptState,
          "start": 1764151000.2, "end": 1764151020.9 | null,
          "mode": "dynamic" | "ranktable",
          "rendezvous": {"host": "127.0.0.1", "port": 40123} | null,
          "resume": {"epoch": 1, "global_step": 6, "paths": {"0": ".../rank_0/x.ckpt", ...}} | null,
          "ranks": {"0": RankRecord, ..., "scheduler": RankRecord},
          "failure": FailureRecord | null,
          "stop_reason": "SIGINT" | "SIGTERM" | "stop command" | null,
          "group_down_s": 0.08 | null        # failure seen -> every process of the attempt gone
        }
      ]
    }
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, TypedDict, Union

from cluster.contracts.jobdir import JOB_JSON
from cluster.contracts.states import AttemptState, JobState

SCHEMA = 1


class RankRecord(TypedDict, total=False):
    pid: Optional[int]
    device: Optional[int]
    host: str
    exit_code: Optional[int]          # negative: killed by that signal
    signal: Optional[str]             # "SIGKILL"


class FailureRecord(TypedDict, total=False):
    rank: Optional[int]               # null: the scheduler or the launcher itself
    name: str                         # "rank_1" | "scheduler"
    reason: str                       # exit | signal | hang | startup | launch | launcher
    exit_code: Optional[int]
    signal: Optional[str]
    at: float                         # when the launcher saw it
    message: str
    last_lines: List[str]             # the rank's last log lines


class AttemptRecord(TypedDict, total=False):
    attempt: int
    state: str                        # an AttemptState value
    start: float
    end: Optional[float]
    mode: str
    rendezvous: Optional[Dict[str, Any]]
    resume: Optional[Dict[str, Any]]
    ranks: Dict[str, RankRecord]      # keys: "0", "1", ..., "scheduler"
    failure: Optional[FailureRecord]
    stop_reason: Optional[str]
    group_down_s: Optional[float]


class JobRecord(TypedDict, total=False):
    schema: int
    job_id: str
    job_dir: str
    state: str                        # a JobState value
    created: float
    updated: float
    launcher: Optional[Dict[str, Any]]
    spec: Dict[str, Any]
    world_size: int
    config_sha: Optional[str]
    restarts: int
    exit_code: Optional[int]
    message: Optional[str]
    attempts: List[AttemptRecord]


class JobJsonError(ValueError):
    """A job.json that is missing, unreadable or does not follow the schema; the text names the file
    and, where one is at fault, the field."""

    def __init__(self, path: Any, message: str, field: Optional[str] = None) -> None:
        self.path = str(path)
        self.field = field
        where = f"{self.path}: field {field!r}: " if field else f"{self.path}: "
        super().__init__(where + message)


# ------------------------------------------------------------------ checks

_NUM = (int, float)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, _NUM) and not isinstance(v, bool)


def _kind(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _check(path: Any, obj: Dict[str, Any], key: str, ok: Any, want: str, field: str,
           required: bool = False, nullable: bool = True) -> None:
    if key not in obj:
        if required:
            raise JobJsonError(path, f"missing (expected {want})", field)
        return
    v = obj[key]
    if v is None and nullable and not required:
        return
    if not ok(v):
        raise JobJsonError(path, f"expected {want}, found {_kind(v)} {json.dumps(v)[:60]}", field)


def _check_rank(path: Any, rec: Any, field: str) -> None:
    if not isinstance(rec, dict):
        raise JobJsonError(path, f"expected an object, found {_kind(rec)}", field)
    _check(path, rec, "pid", _is_int, "an integer", f"{field}.pid")
    _check(path, rec, "device", _is_int, "an integer", f"{field}.device")
    _check(path, rec, "exit_code", _is_int, "an integer", f"{field}.exit_code")
    _check(path, rec, "host", lambda v: isinstance(v, str), "a string", f"{field}.host")


def check_attempt(path: Any, rec: Any, field: str) -> AttemptRecord:
    if not isinstance(rec, dict):
        raise JobJsonError(path, f"expected an object, found {_kind(rec)}", field)
    _check(path, rec, "attempt", lambda v: _is_int(v) and v >= 0, "an integer >= 0", f"{field}.attempt",
           required=True)
    _check(path, rec, "state", lambda v: v in {s.value for s in AttemptState},
           "one of " + ", ".join(s.value for s in AttemptState), f"{field}.state", required=True)
    for key in ("start", "end", "group_down_s"):
        _check(path, rec, key, _is_num, "a number", f"{field}.{key}")
    ranks = rec.get("ranks")
    if ranks is not None:
        if not isinstance(ranks, dict):
            raise JobJsonError(path, f"expected an object, found {_kind(ranks)}", f"{field}.ranks")
        for name, r in ranks.items():
            if name != "scheduler" and not str(name).isdigit():
                raise JobJsonError(path, "keys are rank numbers or 'scheduler'", f"{field}.ranks.{name}")
            _check_rank(path, r, f"{field}.ranks.{name}")
    failure = rec.get("failure")
    if failure is not None:
        if not isinstance(failure, dict):
            raise JobJsonError(path, f"expected an object or null, found {_kind(failure)}", f"{field}.failure")
        _check(path, failure, "rank", _is_int, "an integer", f"{field}.failure.rank")
        _check(path, failure, "message", lambda v: isinstance(v, str), "a string", f"{field}.failure.message")
        _check(path, failure, "last_lines", lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
               "a list of strings", f"{field}.failure.last_lines")
    return rec  # type: ignore[return-value]


def check_job(path: Any, data: Any) -> JobRecord:
    """``data`` if it follows the schema; raises JobJsonError naming ``path`` and the first bad field."""
    if not isinstance(data, dict):
        raise JobJsonError(path, f"not a pspnet-cluster job.json (a JSON object is expected, found {_kind(data)})")
    _check(path, data, "schema", lambda v: _is_int(v) and v <= SCHEMA,
           f"an integer <= {SCHEMA} (written by a newer pspnet-cluster?)", "schema")
    _check(path, data, "spec", lambda v: isinstance(v, dict), "an object (the job's spec)", "spec", required=True)
    _check(path, data, "state", lambda v: v in {s.value for s in JobState},
           "one of " + ", ".join(s.value for s in JobState), "state", required=True)
    _check(path, data, "world_size", lambda v: _is_int(v) and v >= 1, "an integer >= 1", "world_size",
           required=True)
    for key in ("job_id", "job_dir", "config_sha", "message"):
        _check(path, data, key, lambda v: isinstance(v, str), "a string", key)
    for key in ("created", "updated"):
        _check(path, data, key, _is_num, "a number", key)
    for key in ("restarts", "exit_code"):
        _check(path, data, key, _is_int, "an integer", key)
    launcher = data.get("launcher")
    if launcher is not None:
        if not isinstance(launcher, dict):
            raise JobJsonError(path, f"expected an object or null, found {_kind(launcher)}", "launcher")
        _check(path, launcher, "pid", _is_int, "an integer", "launcher.pid")
    _check(path, data, "attempts", lambda v: isinstance(v, list), "a list of attempt records", "attempts",
           required=True)
    for i, rec in enumerate(data["attempts"]):
        check_attempt(path, rec, f"attempts[{i}]")
    return data  # type: ignore[return-value]


def load_job_json(job_dir_or_file: Union[str, os.PathLike]) -> JobRecord:
    """Read and check the job.json of a job dir (or the file itself).  Raises JobJsonError."""
    p = Path(job_dir_or_file)
    path = p if p.name == JOB_JSON and not p.is_dir() else p / JOB_JSON
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JobJsonError(path.parent, f"not a job dir (no {JOB_JSON}); "
                                        "`pspnet-cluster status` lists the jobs under ./runs") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise JobJsonError(path, f"unreadable: {exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise JobJsonError(path, f"not valid JSON: {exc}") from None
    except RecursionError:
        raise JobJsonError(path, "not valid JSON: nested too deeply") from None
    return check_job(path, data)


# ------------------------------------------------------------------ readers' helpers

def last_attempt(job: JobRecord) -> Optional[AttemptRecord]:
    attempts = job.get("attempts") or []
    return attempts[-1] if attempts else None


def rank_exit_codes(attempt: Optional[AttemptRecord]) -> Dict[int, int]:
    """``{rank: exit_code}`` of the ranks of an attempt that have ended (the scheduler left out)."""
    out: Dict[int, int] = {}
    for name, rec in ((attempt or {}).get("ranks") or {}).items():
        code = rec.get("exit_code")
        if name != "scheduler" and code is not None:
            out[int(name)] = code
    return out
