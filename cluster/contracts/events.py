"""The per-rank event stream: the one definition the trainer writes with and every reader reads with.

A rank prints one JSON object per line on stdout, prefixed by ``MARKER``; every other line is an
ordinary human log line.  Readers ignore unknown fields and unknown event names and never raise on
partial or garbled input (see ``parse_line``).
"""
from __future__ import annotations

import json
import socket
import sys
import time
from typing import IO, Any, Dict, Mapping, Optional

from cluster.contracts.env import RankEnv

MARKER = "@pspnet "
MARKER_BYTES = MARKER.encode()
SCHEMA_VERSION = 1

#: Fields carried by every event.
COMMON_FIELDS = ("v", "ts", "event", "job", "attempt", "rank", "world_size", "device", "host")

#: Extra fields of each known event (readers must tolerate more, and fewer).
EVENT_FIELDS: Dict[str, tuple] = {
    "start": ("pid", "mode", "backend", "config_sha", "mindspore"),
    "compiled": ("seconds",),
    "step": ("epoch", "step", "global_step", "steps_per_epoch", "loss", "step_time_s", "images_per_s", "lr"),
    "epoch": ("epoch", "epoch_time_s", "mean_step_time_s", "val_loss", "miou", "macc", "allacc", "best_miou"),
    "checkpoint": ("path", "epoch", "global_step", "bytes", "seconds", "sha256"),
    # sent before a long non-step phase ("validation", "checkpoint"), so a quiet rank is not taken for hung
    "phase": ("phase", "global_step"),
    "resumed": ("path", "epoch", "global_step"),
    "finished": ("epochs", "best_miou", "wall_s"),
    "error": ("message", "where"),
}
KNOWN_EVENTS = frozenset(EVENT_FIELDS)


def encode(event: Dict[str, Any]) -> str:
    """One stream line (with marker, without newline) for an event dict."""
    return MARKER + json.dumps(event, separators=(",", ":"), allow_nan=False, default=_jsonable)


def _jsonable(value: Any) -> Any:
    # numpy scalars and similar: anything with item() or float()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: a diverged loss is reported as null rather than breaking the line."""
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    return value


def parse_line(line: Any) -> Optional[Dict[str, Any]]:
    """Parse one stream line into an event dict, or return None.

    Accepts ``str`` or ``bytes``, with or without the marker (event files store lines without it),
    with or without a trailing newline.  Anything that is not a JSON object carrying an ``event``
    string gives None; this function never raises.
    """
    try:
        if isinstance(line, (bytes, bytearray)):
            line = bytes(line).decode("utf-8", errors="replace")
        if not isinstance(line, str):
            return None
        text = line.strip()
        if text.startswith(MARKER.strip()):
            text = text[len(MARKER.strip()):].lstrip()
        if not text.startswith("{"):
            return None
        obj = json.loads(text)
    except (ValueError, RecursionError, UnicodeError):
        return None
    except Exception:  # noqa: BLE001 - a reader must survive any input
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("event"), str):
        return None
    return obj


def split_stream_line(line: str) -> Optional[str]:
    """If ``line`` is an event line on a rank's stdout, return its JSON part (marker removed)."""
    if line.startswith(MARKER):
        return line[len(MARKER):].rstrip("\r\n")
    return None


class EventWriter:
    """Writes the event stream of one rank.  Used by the trainer (and the test fake worker)."""

    def __init__(self, *, job: str, attempt: int, rank: int, world_size: int,
                 device: Optional[int], host: Optional[str] = None,
                 stream: Optional[IO[str]] = None) -> None:
        self.base = {
            "v": SCHEMA_VERSION, "job": job, "attempt": int(attempt), "rank": int(rank),
            "world_size": int(world_size), "device": device,
            "host": host or socket.gethostname(),
        }
        self.stream = stream

    @classmethod
    def from_env(cls, stream: Optional[IO[str]] = None, env: Optional[Mapping[str, str]] = None) -> "EventWriter":
        """Build from the rank environment (raises RankEnvError on a malformed one)."""
        e = RankEnv.from_env(env)
        return cls(job=e.job_id or "local", attempt=e.attempt or 0, rank=e.rank or 0, world_size=e.rank_size or 1,
                   device=e.device_id, host=e.host, stream=stream)

    def event(self, name: str, **fields: Any) -> Dict[str, Any]:
        ev = dict(self.base)
        ev["ts"] = time.time()
        ev["event"] = name
        for key, value in fields.items():
            ev[key] = _finite(value)
        return ev

    def emit(self, name: str, **fields: Any) -> Dict[str, Any]:
        ev = self.event(name, **fields)
        stream = self.stream or sys.stdout
        stream.write(encode(ev) + "\n")
        stream.flush()
        return ev
