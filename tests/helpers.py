"""Helpers shared by the tests (``from helpers import ...``; pytest puts tests/ on sys.path)."""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Dict, List


def wait_for(cond: Callable[[], Any], timeout: float = 30.0, what: str = "condition", interval: float = 0.05) -> Any:
    """Poll ``cond()`` until it returns something true (returned) or ``timeout`` seconds pass (AssertionError)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def job_json(job_dir: Any) -> Dict[str, Any]:
    return json.loads((Path(job_dir) / "job.json").read_text())


def events(job_dir: Any, rank: int) -> List[Dict[str, Any]]:
    """The events a rank's file holds so far ([] before the file exists)."""
    path = Path(job_dir) / "events" / f"rank_{rank}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def job_record(job: str, state: str, world_size: int = 1, attempts: int = 1) -> Dict[str, Any]:
    """A minimal job.json as the launcher writes it: ``attempts`` attempts, all but the last failed."""
    last = "running" if state in ("running", "restarting", "pending") else state
    recs = [{"attempt": a, "state": "failed" if a < attempts - 1 else last} for a in range(attempts)]
    return {"schema": 1, "job_id": job, "state": state, "spec": {}, "world_size": world_size,
            "restarts": max(0, attempts - 1), "attempts": recs}
