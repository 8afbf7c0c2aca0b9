"""`pspnet-cluster submit`: run a job on a Slurm cluster from a login node.

It writes ``runs/<job-id>/job.sbatch`` (plain bash with ``#SBATCH`` lines: read it, edit it, resubmit it
with ``sbatch``), submits it, and prints the Slurm job id and the job dir.  Inside the allocation the
script runs ``pspnet-cluster launch --launcher slurm`` (or ``resume`` when the job dir already holds a
job: a requeued or resubmitted job continues from the newest checkpoint every rank holds).

Slurm's time-limit warning (``--signal=B:USR1@SECONDS``) reaches the script, which stops the launcher
(every rank gets SIGTERM; the job stays resumable) and, with ``--requeue``, puts the job back in the
queue.  A preempted or cancelled job gets SIGTERM, which the script passes on the same way.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from cluster.accelerators import BACKEND_CHOICES

from cluster.contracts.jobdir import SBATCH as SBATCH_FILE, SLURM

SUBMIT_EPILOG = """\
examples:
  pspnet-cluster submit --nodes 2 --devices 8 --time 4:00:00 -- data_root=/data/VOC2012 epochs=50
  pspnet-cluster submit --nodes 4 --devices 8 --time 24:00:00 --partition ascend --requeue \\
      --config voc2012 --max-restarts 2 -- data_root=/data/VOC2012
  pspnet-cluster submit --nodes 2 --devices 8 --time 1:00:00 --no-submit    # write job.sbatch only
  sbatch runs/<job-id>/job.sbatch                                          # submit it (again) by hand

The job dir must be on a file system every node mounts at the same path (the launcher checks).
Then: `pspnet-cluster status runs/<job-id>` (our state and Slurm's), `logs`, `top`, `summary` as for any
job; `pspnet-cluster stop runs/<job-id>` cancels it through Slurm and leaves it resumable.

exit codes: 0 submitted, 2 bad input or sbatch refused the job (Slurm's message is shown; nothing queued)
"""


def add_commands(sub: Any) -> None:
    p = sub.add_parser("submit", help="write a Slurm batch script for a job and submit it with sbatch",
                       description="Write runs/<job-id>/job.sbatch, which runs `pspnet-cluster launch --launcher "
                                   "slurm` inside the allocation, submit it with sbatch, and print the Slurm job id "
                                   "and the job dir.",
                       epilog=SUBMIT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, required=True, help="number of nodes (sbatch --nodes)")
    p.add_argument("--devices", required=True,
                   help="ranks per node: a count (8) or a device list (0-7); sbatch --ntasks-per-node")
    p.add_argument("--time", required=True, help="time limit, Slurm's format (4:00:00, 1-00:00:00)")
    p.add_argument("--partition", help="sbatch --partition")
    p.add_argument("--account", help="sbatch --account")
    p.add_argument("--qos", help="sbatch --qos")
    p.add_argument("--gres", help="generic resources per node, e.g. npu:8 (sbatch --gres)")
    p.add_argument("--cpus-per-task", type=int, help="CPUs per rank (sbatch --cpus-per-task)")
    p.add_argument("--requeue", action="store_true",
                   help="after the time-limit warning or a preemption, put the job back in the queue; it "
                        "resumes by itself from the newest common checkpoint")
    p.add_argument("--warn", type=int, default=120, metavar="SECONDS",
                   help="Slurm's warning before the time limit: the ranks stop this long before it [120]")
    p.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                   help="one more sbatch option, written as an #SBATCH line (repeatable), e.g. --exclusive")
    p.add_argument("--no-submit", action="store_true", help="write job.sbatch and stop (submit it with sbatch)")
    # what the launcher runs inside the allocation
    p.add_argument("--config", help="trainer config: name or YAML path [smoke]")
    p.add_argument("--cmd", help="run this program instead of the PSPNet trainer")
    p.add_argument("--job-dir", help="job directory [runs/<job-id>], on a shared file system")
    p.add_argument("--job-id", help="job id [time-based]")
    p.add_argument("--max-restarts", type=int, help="new srun steps after a failure, same allocation [0]")
    p.add_argument("--backend", choices=BACKEND_CHOICES, help="[auto]")
    p.add_argument("--mode", choices=("auto", "dynamic", "ranktable"), help="[auto]")
    p.add_argument("--hang-timeout", type=float, help="see launch --help")
    p.add_argument("--grace", type=float, help="see launch --help")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="after --: trainer config overrides (with --cmd: extra program arguments)")
    p.set_defaults(func=cmd_submit)


def _err(msg: Any) -> int:
    print(f"pspnet-cluster submit: error: {msg}", file=sys.stderr)
    return 2


def _ranks_per_node(devices: str) -> int:
    from cluster.devices import parse_visible_devices
    return len(parse_visible_devices(devices, None, "--devices"))


def sbatch_script(*, job_dir: str, job_id: str, cwd: str, nodes: int, per_node: int, time_limit: str,
                  launch_args: List[str], partition: Optional[str] = None, account: Optional[str] = None,
                  qos: Optional[str] = None, gres: Optional[str] = None, cpus_per_task: Optional[int] = None,
                  requeue: bool = False, warn: int = 120, extra: Optional[List[str]] = None,
                  python: str = sys.executable) -> str:
    """The text of job.sbatch."""
    q = shlex.quote
    lines = ["#!/bin/bash",
             f"# pspnet-cluster job {job_id}, written by `pspnet-cluster submit`.",
             f"# Edit freely; submit again with: sbatch {q(str(Path(job_dir) / SBATCH_FILE))}",
             f"#SBATCH --job-name=pspnet-{job_id}",
             f"#SBATCH --nodes={nodes}",
             f"#SBATCH --ntasks-per-node={per_node}"]
    if cpus_per_task:
        lines.append(f"#SBATCH --cpus-per-task={cpus_per_task}")
    if gres:
        lines.append(f"#SBATCH --gres={gres}")
    lines.append(f"#SBATCH --time={time_limit}")
    for flag, value in (("partition", partition), ("account", account), ("qos", qos)):
        if value:
            lines.append(f"#SBATCH --{flag}={value}")
    lines += [f"#SBATCH --chdir={cwd}",
              f"#SBATCH --output={Path(job_dir) / SLURM / 'batch-%j.out'}",
              "#SBATCH --open-mode=append",
              f"#SBATCH --signal=B:USR1@{int(warn)}",
              "#SBATCH --requeue" if requeue else "#SBATCH --no-requeue"]
    lines += [f"#SBATCH {a}" for a in (extra or [])]
    launch = " ".join(q(a) for a in launch_args)
    lines += [
        "",
        f"JOB_DIR={q(job_dir)}",
        f"PY={q(python)}             # the same interpreter (venv) on every node",
        f"REQUEUE={1 if requeue else 0}",
        "export PYTHONUNBUFFERED=1",
        "",
        "# Slurm's warning before the time limit (USR1) and a cancel or preemption (TERM) stop the launcher:",
        "# it ends the ranks and leaves the job resumable",
        'trap \'echo "pspnet-cluster: Slurm sent USR1 (time limit near): stopping"; WARNED=1; '
        'kill -TERM "$LAUNCHER" 2>/dev/null\' USR1',
        "trap 'kill -TERM \"$LAUNCHER\" 2>/dev/null' TERM",
        "",
        'if [ -f "$JOB_DIR/job.json" ]; then',
        "  # requeued or submitted again: continue from the newest checkpoint every rank holds",
        '  "$PY" -m orchestrator.cli resume "$JOB_DIR" --quiet &',
        "else",
        f'  "$PY" -m orchestrator.cli launch --launcher slurm --job-dir "$JOB_DIR" --quiet {launch} &',
        "fi",
        "LAUNCHER=$!",
        "# a trapped signal interrupts `wait`: wait again until the launcher has really ended",
        'while :; do wait "$LAUNCHER"; rc=$?; kill -0 "$LAUNCHER" 2>/dev/null || break; done',
        'if [ "${WARNED:-0}" = 1 ] && [ "$REQUEUE" = 1 ]; then',
        '  echo "pspnet-cluster: requeueing Slurm job $SLURM_JOB_ID"',
        '  scontrol requeue "$SLURM_JOB_ID"',
        "fi",
        'exit "$rc"',
        ""]
    return "\n".join(lines)


def _launch_args(args: argparse.Namespace) -> List[str]:
    out = ["--devices", str(args.devices)]
    for flag in ("config", "cmd", "max_restarts", "backend", "mode", "hang_timeout", "grace"):
        v = getattr(args, flag)
        if v is not None:
            out += ["--" + flag.replace("_", "-"), str(v)]
    if args.overrides:
        out += ["--", *args.overrides]
    return out


_TIME_RE = re.compile(r"^(\d+-)?\d+(:\d+){0,2}$|^\d+-\d+$|^(UNLIMITED|INFINITE)$", re.I)


def cmd_submit(args: argparse.Namespace) -> int:
    from cluster.errors import ClusterInputError
    from cluster.contracts.jobdir import atomic_write_json
    from orchestrator.jobspec import SpecError, new_job_id

    try:
        if args.nodes < 1:
            raise SpecError(f"--nodes {args.nodes}: must be at least 1")
        per_node = _ranks_per_node(args.devices)
        if not _TIME_RE.match(args.time.strip()):
            raise SpecError(f"--time {args.time}: not a Slurm time (MINUTES, H:MM:SS, D-HH:MM:SS)")
        if args.warn < 0:
            raise SpecError("--warn must be >= 0 seconds")
        cwd = os.getcwd()
        job_id = args.job_id or new_job_id()
        job_dir = Path(os.path.expanduser(args.job_dir)) if args.job_dir else Path(cwd) / "runs" / job_id
        if not job_dir.is_absolute():
            job_dir = Path(cwd) / job_dir
        if args.job_dir and not args.job_id:
            job_id = job_dir.name
        if (job_dir / "job.json").exists():
            raise SpecError(f"{job_dir}: already holds a job; `sbatch {job_dir / SBATCH_FILE}` continues it, or "
                            "choose another --job-dir / --job-id")
        if not args.no_submit and not shutil.which("sbatch"):
            raise SpecError("sbatch not found on PATH: run submit on a Slurm login node, or use --no-submit "
                            "and copy job.sbatch to one")
    except (SpecError, ClusterInputError) as exc:
        return _err(exc)
    created = not job_dir.exists()
    try:
        (job_dir / SLURM).mkdir(parents=True, exist_ok=True)     # sbatch writes the batch output there
    except OSError as exc:
        return _err(f"{job_dir}: cannot make the job dir ({exc.strerror or exc})")
    script = sbatch_script(job_dir=str(job_dir), job_id=job_id, cwd=cwd, nodes=args.nodes, per_node=per_node,
                           time_limit=args.time.strip(), launch_args=_launch_args(args),
                           partition=args.partition, account=args.account, qos=args.qos, gres=args.gres,
                           cpus_per_task=args.cpus_per_task, requeue=args.requeue, warn=args.warn,
                           extra=args.sbatch_arg)
    path = job_dir / SBATCH_FILE
    path.write_text(script)
    os.chmod(path, 0o755)
    if args.no_submit:
        print(f"wrote {path}; submit it with: sbatch {path}")
        return 0
    res = subprocess.run([shutil.which("sbatch") or "sbatch", "--parsable", str(path)], capture_output=True,
                         text=True, timeout=120, cwd=cwd)
    out = res.stdout.strip().splitlines()
    if res.returncode != 0 or not out:
        said = " ".join(l.strip() for l in res.stderr.splitlines() if l.strip()) or f"exit code {res.returncode}"
        if created:
            shutil.rmtree(job_dir, ignore_errors=True)
        return _err(f"sbatch refused the job: {said}")
    slurm_id = out[-1].split(";")[0].strip()
    from orchestrator.backends.slurm import SLURM_JSON, read_slurm_json
    data: Dict[str, Any] = read_slurm_json(str(job_dir))
    data.update({"job_id": slurm_id, "batch": True, "script": str(path)})
    atomic_write_json(job_dir / SLURM_JSON, data)
    print(f"submitted Slurm job {slurm_id}")
    print(f"job dir: {job_dir}")
    print(f"  pspnet-cluster status {job_dir}    # our state and Slurm's")
    print(f"  pspnet-cluster stop {job_dir}      # scancel; the job stays resumable")
    return 0
