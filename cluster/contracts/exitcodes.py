"""Exit codes of every pspnet-cluster command (and of the launcher, whose code job.json records)."""
from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0            # every rank finished, or the command did its job
    FAILED = 1        # the job failed: a rank died or hung and no restart was left
    BAD_INPUT = 2     # unknown devices, bad config, busy port, bad job.json...; nothing was started
    STOPPED = 130     # SIGINT/SIGTERM/`stop` (128 + SIGINT, what a shell reports for Ctrl-C)


#: The text the commands' --help shows.
HELP = f"""\
exit codes:
  {ExitCode.OK:<4d} every rank finished (or the command did its job)
  {ExitCode.FAILED:<4d} the job failed: a rank died or hung and no restart was left
  {ExitCode.BAD_INPUT:<4d} bad input: unknown devices, bad config, busy port, missing command...; nothing was started
  {ExitCode.STOPPED:<4d} stopped by SIGINT/SIGTERM/`stop`; `pspnet-cluster resume JOB_DIR` continues it
"""
