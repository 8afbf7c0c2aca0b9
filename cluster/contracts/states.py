"""States of a job, of one attempt and of one device (rank), as they appear in job.json and metrics.

The enums are ``str``-valued: ``JobState.RUNNING == "running"`` and json.dumps writes ``"running"``,
so job.json and the metric labels read the same as plain strings.
"""
from __future__ import annotations

from enum import Enum


class _Named(str, Enum):
    """A state that prints and formats as its plain value, the word job.json and the metrics carry."""

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


class JobState(_Named):
    """The state of a job (``job.json`` ``state``), set only by its launcher (and by ``stop`` when the
    launcher is gone)::

        pending --> running --> succeeded
                       |  ^---- restarting <--+   (a rank failed and a restart is left)
                       |                      |
                       +----------------------+
                       +--> failed            (a rank failed, no restart left; or the launcher failed)
                       +--> stopped           (SIGINT/SIGTERM/`stop`; from pending or restarting too)

    ``resume`` moves a failed or stopped job back to running (a new attempt); a succeeded job stays.
    """
    PENDING = "pending"
    RUNNING = "running"
    RESTARTING = "restarting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def final(self) -> bool:
        return self in FINAL_JOB_STATES


FINAL_JOB_STATES = frozenset((JobState.SUCCEEDED, JobState.FAILED, JobState.STOPPED))


class AttemptState(_Named):
    """The state of one attempt (``job.json`` ``attempts[i].state``)::

        running --> succeeded   every rank exited 0
                +-> failed      a rank exited non-zero, was killed, hung or did not start
                +-> stopped     the job was stopped during the attempt
                +-> lost        the launcher died while the attempt ran (seen by the next launcher)
    """
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    LOST = "lost"


class DeviceState(_Named):
    """The state of one rank as monitoring sees it (events, exit codes, job state)::

        starting --> running --> finished   the rank's "finished" event
                 |           +-> failed     an "error" event, a non-zero exit, the failed rank of job.json
                 |           +-> stopped    the job ended while the rank had not finished
                 +-----------+-> unknown    only a plain text log that stopped growing says anything
        (any) --> starting                  a new attempt starts (a "start" event)
    """
    STARTING = "starting"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    STOPPED = "stopped"
    UNKNOWN = "unknown"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_DEVICE_STATES


TERMINAL_DEVICE_STATES = frozenset((DeviceState.FINISHED, DeviceState.FAILED, DeviceState.STOPPED))
