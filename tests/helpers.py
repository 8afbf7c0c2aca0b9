"""Helpers shared by the tests (import with ``from helpers import ...``; pytest puts tests/ on sys.path)."""
from __future__ import annotations

from typing import Any, Dict


def job_record(job: str, state: str, world_size: int = 1, attempts: int = 1) -> Dict[str, Any]:
    """A minimal job.json as the launcher writes it: ``attempts`` attempts, all but the last failed."""
    last = "running" if state in ("running", "restarting", "pending") else state
    recs = [{"attempt": a, "state": "failed" if a < attempts - 1 else last} for a in range(attempts)]
    return {"schema": 1, "job_id": job, "state": state, "spec": {}, "world_size": world_size,
            "restarts": max(0, attempts - 1), "attempts": recs}
