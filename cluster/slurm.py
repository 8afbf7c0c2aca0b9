"""What the launcher needs to know about Slurm: the allocation it runs in, node lists, and the
scheduler port of a job.

Pure functions over strings and environments (no Slurm needed), plus thin wrappers that ask
``scontrol`` when it is there:

- ``expand_hostlist("node[1-3,5],gpu[01-02]")`` -> ``["node1", "node2", "node3", "node5", "gpu01",
  "gpu02"]``, as Slurm expands it (zero padding kept, several bracket groups multiply out);
  The launcher expands SLURM_JOB_NODELIST with it instead of running ``scontrol show hostnames``
  (one process start less on every launch; a test holds it to scontrol's answers).
- ``expand_counts("2(x3),1")`` -> ``[2, 2, 2, 1]`` (SLURM_JOB_CPUS_PER_NODE, SLURM_TASKS_PER_NODE).
- ``SlurmEnv.from_env()``: the job (SLURM_JOB_ID, node list, CPUs per node) and, inside a task,
  the task (SLURM_PROCID, SLURM_LOCALID, SLURM_NODEID, SLURMD_NODENAME, SLURM_NTASKS).
- ``scheduler_port(job_id, attempt)``: the MindSpore scheduler port of one attempt of a job, derived
  from the job id, so every node computes the same port without talking to the others.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional

from cluster.errors import ClusterInputError


class SlurmError(ClusterInputError):
    """Slurm refused something, or the environment is not a Slurm allocation."""


# ---------------------------------------------------------------- host lists

def _split_top(text: str) -> List[str]:
    """Split on commas that are not inside brackets."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise SlurmError(f"host list {text!r}: ']' without '['")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise SlurmError(f"host list {text!r}: '[' without ']'")
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _expand_ranges(body: str, whole: str) -> List[str]:
    out: List[str] = []
    for item in body.split(","):
        item = item.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not m:
            raise SlurmError(f"host list {whole!r}: bad range {item!r} (expected N or N-M)")
        lo, hi = m.group(1), m.group(2)
        if hi is None:
            out.append(lo)
            continue
        if int(hi) < int(lo):
            raise SlurmError(f"host list {whole!r}: range {item!r} runs backwards")
        width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
        out.extend(str(i).zfill(width) for i in range(int(lo), int(hi) + 1))
    return out


def _expand_one(name: str, whole: str) -> List[str]:
    m = re.search(r"\[([^\[\]]*)\]", name)
    if not m:
        return [name]
    head, tail = name[:m.start()], name[m.end():]
    return [head + mid + rest for mid in _expand_ranges(m.group(1), whole) for rest in _expand_one(tail, whole)]


def expand_hostlist(text: str) -> List[str]:
    """Slurm's host list syntax expanded in Python, as ``scontrol show hostnames`` expands it."""
    names: List[str] = []
    for part in _split_top(text or ""):
        names.extend(_expand_one(part, text))
    return names


def expand_counts(text: str) -> List[int]:
    """``"2(x3),1"`` -> ``[2, 2, 2, 1]``: Slurm's compressed per-node counts."""
    out: List[int] = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", item)
        if not m:
            raise SlurmError(f"per-node count list {text!r}: bad item {item!r}")
        out.extend([int(m.group(1))] * int(m.group(2) or 1))
    return out


# ---------------------------------------------------------------- the environment

@dataclass(frozen=True)
class SlurmEnv:
    """A Slurm job as its environment describes it (the task fields only inside ``srun``)."""
    job_id: str
    nodes: List[str]
    cpus_per_node: List[int] = field(default_factory=list)
    partition: Optional[str] = None
    submit_dir: Optional[str] = None
    # inside a task
    procid: Optional[int] = None
    localid: Optional[int] = None
    nodeid: Optional[int] = None
    node_name: Optional[str] = None
    ntasks: Optional[int] = None
    step_id: Optional[str] = None

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> Optional["SlurmEnv"]:
        """None outside an allocation (no SLURM_JOB_ID)."""
        env = os.environ if env is None else env
        job_id = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
        if not job_id:
            return None
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
        if not nodelist:
            raise SlurmError(f"SLURM_JOB_ID={job_id} is set but SLURM_JOB_NODELIST is not: not a usable "
                             "allocation (run inside sbatch/salloc)")
        nodes = expand_hostlist(nodelist)
        cpus = expand_counts(env.get("SLURM_JOB_CPUS_PER_NODE", ""))

        def num(key: str) -> Optional[int]:
            v = env.get(key)
            return int(v) if v not in (None, "") and str(v).isdigit() else None
        return cls(job_id=str(job_id), nodes=nodes, cpus_per_node=cpus, partition=env.get("SLURM_JOB_PARTITION"),
                   submit_dir=env.get("SLURM_SUBMIT_DIR"), procid=num("SLURM_PROCID"), localid=num("SLURM_LOCALID"),
                   nodeid=num("SLURM_NODEID"), node_name=env.get("SLURMD_NODENAME"), ntasks=num("SLURM_NTASKS"),
                   step_id=env.get("SLURM_STEP_ID"))

    def cpus_of(self, node: str) -> Optional[int]:
        """CPUs this job holds on ``node`` (None when Slurm did not say)."""
        if len(self.cpus_per_node) != len(self.nodes):
            return None
        return self.cpus_per_node[self.nodes.index(node)]


# ---------------------------------------------------------------- the scheduler port

#: Scheduler ports live in [PORT_BASE, PORT_BASE + PORT_SLOTS * PORT_ATTEMPTS): below Linux's
#: ephemeral range (32768+), so no outgoing connection on the node can hold one by chance.
PORT_BASE = 20000
PORT_SLOTS = 3000
PORT_ATTEMPTS = 4


def scheduler_port(job_id: str, attempt: int = 0) -> int:
    """The port of one attempt's scheduler: a block of PORT_ATTEMPTS ports per job id.

    Jobs whose ids differ by less than PORT_SLOTS get disjoint blocks, so two jobs that run on one
    node at the same time never pick the same port; each attempt takes the next port of the block,
    so a restart does not wait for the previous scheduler's socket to leave TIME_WAIT.
    """
    digits = re.sub(r"\D", "", str(job_id)) or "0"
    slot = int(digits) % PORT_SLOTS
    return PORT_BASE + slot * PORT_ATTEMPTS + (int(attempt) % PORT_ATTEMPTS)


def node_addresses(nodes: List[str], env: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """{node: NodeAddr} from ``scontrol show node`` (the node name itself where Slurm gives none)."""
    out = {n: n for n in nodes}
    scontrol = shutil.which("scontrol")
    if not scontrol or not nodes:
        return out
    try:
        res = subprocess.run([scontrol, "-o", "show", "node", ",".join(nodes)], capture_output=True, text=True,
                             timeout=30, env=None if env is None else dict(env))
    except (OSError, subprocess.TimeoutExpired):
        return out
    for line in res.stdout.splitlines():
        fields = dict(w.split("=", 1) for w in line.split() if "=" in w)
        name, addr = fields.get("NodeName"), fields.get("NodeAddr")
        if name in out and addr:
            out[name] = addr
    return out
