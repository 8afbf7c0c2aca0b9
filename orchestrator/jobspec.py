"""The job spec: what to run where, from the command line and an optional YAML file.

``JobSpec`` is a small value type; ``JobSpec.to_dict()`` is what ``job.json`` stores under ``spec``
and ``JobSpec.from_dict()`` reads it back for ``resume``.  A YAML spec file (``launch --spec FILE``)
holds the same keys; the command line wins over the file::

    # job.yaml
    devices: "0-3"
    backend: cpu
    mode: dynamic
    config: smoke
    overrides: [epochs=2, batch_size=2]
    max_restarts: 2
    hang_timeout: 600

Errors are ``SpecError`` (bad input: the CLI answers exit 2) naming the file/option and what to do.
"""
from __future__ import annotations

import math
import os
import re
import shlex
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional

from cluster.accelerators import BACKEND_CHOICES as BACKENDS

MODES = ("auto", "dynamic", "ranktable")

DEFAULT_RUNS = "runs"
DEFAULT_HANG_TIMEOUT = 900.0
DEFAULT_STARTUP_TIMEOUT = 1800.0
DEFAULT_GRACE = 10.0
DEFAULT_FAILURE_GRACE = 0.3

_JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class SpecError(ValueError):
    """Bad job input, worded for the user."""


@dataclass
class JobSpec:
    devices: str = "1"                      # count ("8") or list ("0-3,6")
    backend: str = "auto"
    mode: str = "auto"                      # resolved to dynamic / ranktable
    config: str = "smoke"                   # trainer config name or YAML path
    overrides: List[str] = field(default_factory=list)   # KEY=VALUE (trainer) or extra args (--cmd)
    cmd: Optional[List[str]] = None         # any program instead of the trainer
    hosts: Optional[str] = None             # hosts file (multi-host launcher)
    launcher: str = ""                      # where ranks run: a backend name (local, ssh, slurm); "" detects
    job_id: str = ""
    job_dir: str = ""
    max_restarts: int = 0
    hang_timeout: float = DEFAULT_HANG_TIMEOUT      # 0: off
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT  # before the first compiled/step event
    grace: float = DEFAULT_GRACE            # SIGTERM -> SIGKILL when stopping (signal, `stop`)
    failure_grace: float = DEFAULT_FAILURE_GRACE   # SIGTERM -> SIGKILL after a rank failed
    metrics_port: Optional[int] = None
    metrics_host: str = "127.0.0.1"
    sched_host: str = "127.0.0.1"
    sched_port: Optional[int] = None        # None: a free port per attempt
    bind_cores: Optional[bool] = None       # None: on for ascend, off otherwise
    hccn_conf: Optional[str] = None
    npu_smi: Optional[str] = None
    rank_table_format: str = "1.0"
    # rank-table inputs of a one-host job, as `pspnet-cluster ranktable` takes them (a hosts file holds
    # them per host instead):
    rank_table_rules: str = "auto"          # card rules: auto, 910, a3, none
    ips: Optional[str] = None               # device IPs: 0=IP,1=IP or IP,IP
    server_id: Optional[str] = None
    host_ip: Optional[str] = None           # format 1.2
    super_pod_id: Optional[str] = None      # format 1.2 super-pod mode
    super_device_ids: Optional[str] = None  # format 1.2 super-pod mode: 0=SDID,1=SDID or SDID,SDID
    hccn_tool: bool = True                  # ask hccn_tool for device IPs when no hccn.conf is there
    cwd: str = ""
    report: bool = True                     # write report/ (summary.md + plots) when the job ends

    # ------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any], source: str = "job spec") -> "JobSpec":
        if not isinstance(data, dict):
            raise SpecError(f"{source}: expected a mapping of key: value")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")
        spec = cls(**{k: v for k, v in data.items()})
        spec.check(source)
        return spec

    def check(self, source: str = "job spec") -> None:
        """Types and ranges; raises SpecError naming the field."""
        def bad(key: str, msg: str) -> SpecError:
            return SpecError(f"{source}: {key}: {msg}")
        self.devices = str(self.devices).strip()
        if not self.devices:
            raise bad("devices", "empty; give a count (8) or a list (0-3,6)")
        self.backend = str(self.backend or "auto").lower()
        if self.backend not in BACKENDS:
            raise bad("backend", f"{self.backend!r} is not one of {', '.join(BACKENDS)}")
        self.mode = str(self.mode or "auto").lower()
        if self.mode not in MODES:
            raise bad("mode", f"{self.mode!r} is not one of {', '.join(MODES)}")
        if isinstance(self.overrides, str):
            self.overrides = _split(self.overrides, lambda msg: bad("overrides", msg))
        self.overrides = [str(o) for o in (self.overrides or [])]
        if isinstance(self.cmd, str):
            self.cmd = _split(self.cmd, lambda msg: bad("cmd", msg))
            if not self.cmd:
                raise bad("cmd", "empty command")
        self.max_restarts = check_max_restarts(self.max_restarts, lambda msg: bad("max_restarts", msg))
        for key, most in SECONDS_LIMITS.items():
            v = getattr(self, key)
            try:
                if isinstance(v, bool):
                    raise TypeError
                v = float(v)
            except (TypeError, ValueError, OverflowError):
                raise bad(key, f"{getattr(self, key)!r} is not a number of seconds") from None
            if not math.isfinite(v) or not 0 <= v <= most:
                raise bad(key, f"{getattr(self, key)!r}: give a number of seconds from 0 to {most:g}")
            setattr(self, key, v)
        for key in ("metrics_port", "sched_port"):
            v = getattr(self, key)
            if v is not None:
                try:
                    v = int(v)
                except (TypeError, ValueError):
                    raise bad(key, f"{v!r} is not a port number") from None
                if not 0 < v < 65536:
                    raise bad(key, f"{v} is not a port number (1-65535)")
                setattr(self, key, v)
        self.launcher = str(self.launcher or "").strip().lower()
        if self.launcher and not re.match(r"^[a-z0-9][a-z0-9_-]*$", self.launcher):
            raise bad("launcher", f"{self.launcher!r} is not a launcher name (local, ssh, slurm)")
        if not isinstance(self.report, bool):
            raise bad("report", f"{self.report!r} is not true or false")
        if self.rank_table_format not in ("1.0", "1.2"):
            raise bad("rank_table_format", "use 1.0 or 1.2")
        if self.rank_table_rules not in ("auto", "910", "a3", "none"):
            raise bad("rank_table_rules", f"{self.rank_table_rules!r}: use auto, 910, a3 or none")
        per_host = [k for k in ("ips", "server_id", "host_ip", "super_pod_id", "super_device_ids")
                    if getattr(self, k) is not None]
        if self.hosts and per_host:
            raise bad(per_host[0], "a hosts file describes every server (device_ips, server_id, host_ip, "
                                   "super_pod_id, super_device_ids per host); give it there")
        for key in per_host:
            v = getattr(self, key)
            if isinstance(v, dict):               # a spec file's YAML mapping or list: the option's text form
                v = ",".join(f"{k}={x}" for k, x in v.items())
            elif isinstance(v, (list, tuple)):
                v = ",".join(map(str, v))
            setattr(self, key, str(v))
        if self.job_id and not _JOB_ID_RE.match(self.job_id):
            raise bad("job_id", f"{self.job_id!r}: use letters, digits, '.', '_' or '-' (up to 100)")

    def discover_options(self) -> Dict[str, Any]:
        """The rank-table inputs as ``cluster.accelerators.discover_local`` takes them (parsed and checked)."""
        from cluster.devices import parse_device_ips, parse_super_device_ids
        return {"ips": parse_device_ips(self.ips), "server_id": self.server_id, "host_ip": self.host_ip,
                "super_pod_id": self.super_pod_id, "use_hccn_tool": bool(self.hccn_tool),
                "super_device_ids": parse_super_device_ids(self.super_device_ids)}

    @property
    def job_path(self) -> Path:
        return Path(self.job_dir)

    @property
    def uses_trainer(self) -> bool:
        return not self.cmd


#: upper bounds of the seconds options (NaN, inf and negatives are refused too: NaN would turn a
#: check off without a word, since every comparison with it is false)
SECONDS_LIMITS = {"hang_timeout": 30 * 86400.0, "startup_timeout": 30 * 86400.0, "grace": 3600.0,
                  "failure_grace": 3600.0}


def _split(text: str, error: Any) -> List[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:   # "No closing quotation", "No escaped character"
        raise error(f"{text!r} cannot be split into words ({exc}); check its quotes") from None


def check_max_restarts(value: Any, error: Any = None) -> int:
    """An integer 0..MAX_RESTARTS, or the error ``error(message)`` returns (SpecError by default)."""
    from orchestrator.restart_policy import MAX_RESTARTS
    error = error or (lambda msg: SpecError(f"--max-restarts: {msg}"))
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise TypeError
        n = int(value)
    except (TypeError, ValueError, OverflowError):
        raise error(f"{value!r} is not a whole number") from None
    if not 0 <= n <= MAX_RESTARTS:
        raise error(f"{value!r}: give a number of restarts from 0 to {MAX_RESTARTS}")
    return n


def new_job_id(now: Optional[float] = None) -> str:
    t = time.localtime(now if now is not None else time.time())
    return time.strftime("%Y%m%d-%H%M%S", t) + f"-{os.getpid() % 10000:04d}"


def load_spec_file(path: str) -> Dict[str, Any]:
    import yaml
    from cluster.contracts.jobdir import is_regular_file
    if Path(path).exists() and not is_regular_file(path):
        raise SpecError(f"{path}: the job spec must be a regular YAML file")
    try:
        with open(path, "rb") as fh:
            text = fh.read(10 * 1024 * 1024 + 1).decode("utf-8")
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the job spec: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not a text file (byte {exc.start} is not UTF-8); the job spec is YAML") from None
    if len(text) > 10 * 1024 * 1024:
        raise SpecError(f"{path}: larger than 10 MiB; a job spec is a short YAML file")
    if "\x00" in text:
        raise SpecError(f"{path}: not a text file (NUL bytes); the job spec is YAML")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{path}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping of key: value")
    return data


def resolve(cli: Dict[str, Any], spec_file: Optional[str] = None, runs_dir: str = DEFAULT_RUNS) -> JobSpec:
    """File values <- command-line values (those not None); job id and job dir filled in."""
    data: Dict[str, Any] = {}
    source = "command line"
    if spec_file:
        data.update(load_spec_file(spec_file))
        source = spec_file
    for key, value in cli.items():
        if value is not None:
            data[key] = value
    spec = JobSpec.from_dict(data, source)
    spec.cwd = spec.cwd or os.getcwd()
    if spec.job_dir:
        job_dir = Path(os.path.expanduser(spec.job_dir))
        if not job_dir.is_absolute():
            job_dir = Path(spec.cwd) / job_dir
        spec.job_id = spec.job_id or job_dir.name
    else:
        spec.job_id = spec.job_id or new_job_id()
        job_dir = Path(spec.cwd) / runs_dir / spec.job_id
    spec.job_dir = str(job_dir)
    spec.check(source)
    return spec


def check_job_dir_writable(job_dir: Path) -> None:
    """Create the job dir (or find it empty) and prove it is writable; SpecError otherwise.

    A directory with other files but no job.json is refused: its stale logs and events would be
    merged into the new job's.
    """
    from cluster.contracts.jobdir import JOB_JSON, OWN_FILES
    if (job_dir / JOB_JSON).exists():
        raise SpecError(f"{job_dir}: already holds a job (job.json); use `pspnet-cluster resume {job_dir}` "
                        "or choose another --job-dir / --job-id")
    try:
        others = sorted(p.name for p in job_dir.iterdir() if p.name not in OWN_FILES) if job_dir.is_dir() else []
    except OSError:
        others = []
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise SpecError(f"{job_dir}: not empty ({shown}) and not a job dir (no {JOB_JSON}); launch needs a new "
                        "or empty directory: pick another --job-dir")
    try:
        job_dir.mkdir(parents=True, exist_ok=True)
        probe = job_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise SpecError(f"{job_dir}: job dir is not writable ({exc.strerror or exc}); "
                        "pick another with --job-dir") from None
