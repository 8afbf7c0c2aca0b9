"""CPU core binding: which host cores each local rank may run on.

The model zoo's launch scripts give rank ``i`` of 8 the range ``taskset -c i*avg..(i+1)*avg-1`` with
``avg = cores / 8``; msrun's ``--bind_core`` also splits the cores evenly.  This module does the same,
over the cores this process may actually use (``os.sched_getaffinity``), optionally keeping some for
the launcher itself, and spreading the remainder one core at a time over the first ranks.  A rank
never gets an empty set: with fewer cores than ranks, ranks share cores round-robin.

Public API:

``plan_core_binding(local_ranks, cores=None, reserve=0) -> dict[int, list[int]]``
    ``{local_rank: [core, ...]}``; ``cores`` defaults to this process's affinity; ``reserve`` cores
    (the lowest-numbered) are left to the launcher while at least one core is left for the ranks.
``make_binding_plan(local_ranks, cores=None, reserve=0) -> BindingPlan``: the same with the reserved
    cores, whether ranks share cores, and notes; ``BindingPlan.describe()`` gives the lines
    ``--dry-run`` prints; ``BindingPlan.cpu_list(rank)`` -> ``"0-3"`` (taskset syntax).
``format_cpu_list(cores) -> str`` (``[0,1,2,3,6]`` -> ``"0-3,6"``), ``parse_cpu_list(text) -> list[int]``.
``available_cores() -> list[int]``.
``bind_process(pid, cores) -> str | None``: ``sched_setaffinity``; returns an error message instead of
    raising (the supervisor records it and goes on).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from cluster.errors import ClusterInputError
from cluster.devices import format_device_list, parse_visible_devices


class BindingError(ClusterInputError):
    """Bad input for a binding plan."""


def available_cores() -> List[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def format_cpu_list(cores: Sequence[int]) -> str:
    return format_device_list(sorted(set(cores)))


def parse_cpu_list(text: str, source: str = "cpu list") -> List[int]:
    """``"0-3,6"`` -> ``[0, 1, 2, 3, 6]`` (taskset syntax; a bare number is one core)."""
    text = str(text).strip()
    if text.isdigit():
        text += ","
    try:
        return sorted(parse_visible_devices(text, None, source))
    except ClusterInputError as exc:
        raise BindingError(exc.message, source) from None


@dataclass
class BindingPlan:
    cores_by_rank: Dict[int, List[int]]
    reserved: List[int] = field(default_factory=list)
    shared: bool = False
    notes: List[str] = field(default_factory=list)

    def cpu_list(self, local_rank: int) -> str:
        return format_cpu_list(self.cores_by_rank[local_rank])

    def describe(self) -> List[str]:
        lines = []
        if self.reserved:
            lines.append(f"launcher: cores {format_cpu_list(self.reserved)}")
        for rank, cores in sorted(self.cores_by_rank.items()):
            lines.append(f"local rank {rank}: cores {format_cpu_list(cores)} ({len(cores)})")
        lines.extend(self.notes)
        return lines

    def to_dict(self) -> Dict:
        return {"cores_by_rank": {str(k): v for k, v in self.cores_by_rank.items()},
                "reserved": list(self.reserved), "shared": self.shared, "notes": list(self.notes)}


def make_binding_plan(local_ranks: int, cores: Optional[Sequence[int]] = None, reserve: int = 0) -> BindingPlan:
    if isinstance(local_ranks, bool) or not isinstance(local_ranks, int) or local_ranks < 1:
        raise BindingError(f"need at least one local rank, got {local_ranks!r}", "binding")
    if isinstance(reserve, bool) or not isinstance(reserve, int) or reserve < 0:
        raise BindingError(f"reserved launcher cores must be 0 or more, got {reserve!r}", "binding")
    pool = sorted(set(available_cores() if cores is None else cores))
    if not pool:
        raise BindingError("no CPU cores to bind to", "binding")
    if any((not isinstance(c, int)) or c < 0 for c in pool):
        raise BindingError(f"core ids are non-negative integers: {pool!r}", "binding")
    notes: List[str] = []
    reserved: List[int] = []
    if reserve:
        if reserve >= len(pool):
            notes.append(f"note: {reserve} launcher core(s) asked for but only {len(pool)} available; "
                         f"the launcher shares cores with the ranks")
        else:
            reserved, pool = pool[:reserve], pool[reserve:]
    n = len(pool)
    plan: Dict[int, List[int]] = {}
    shared = n < local_ranks
    if shared:
        for r in range(local_ranks):
            plan[r] = [pool[r % n]]
        notes.append(f"note: {local_ranks} ranks on {n} core(s): ranks share cores")
    else:
        base, extra = divmod(n, local_ranks)
        start = 0
        for r in range(local_ranks):
            size = base + (1 if r < extra else 0)
            plan[r] = pool[start:start + size]
            start += size
    return BindingPlan(cores_by_rank=plan, reserved=reserved, shared=shared, notes=notes)


def plan_core_binding(local_ranks: int, cores: Optional[Sequence[int]] = None, reserve: int = 0) -> Dict[int, List[int]]:
    return make_binding_plan(local_ranks, cores, reserve).cores_by_rank


def bind_process(pid: int, cores: Sequence[int]) -> Optional[str]:
    try:
        os.sched_setaffinity(pid, set(cores))
    except (AttributeError, OSError, ValueError) as exc:
        return f"could not bind pid {pid} to cores {format_cpu_list(cores)}: {exc}"
    return None
