"""Where this process stands in the job: read from the rank environment (``RankEnv``), then joined.

Three modes:

- ``single``: no cluster variables; one process, no collective communication.
- ``dynamic``: MindSpore's dynamic cluster (what ``msrun`` sets up; runs on CPU and really averages
  gradients): ``MS_ROLE`` (``MS_WORKER`` or ``MS_SCHED``), ``MS_SCHED_HOST``, ``MS_SCHED_PORT``,
  ``MS_WORKER_NUM``, ``MS_NODE_ID``.  The scheduler is started with the same command as the workers; a
  scheduler process only joins the cluster (``init()`` returns when the workers are done) and exits 0.
- ``ranktable``: an HCCL rank table on Ascend: ``RANK_TABLE_FILE``, ``RANK_ID``, ``RANK_SIZE``, ``DEVICE_ID``.

:func:`world_from_env` is pure (no MindSpore) and checks the variables; :func:`join` sets the MindSpore
context, calls ``init()`` and the data-parallel context (gradient mean).  :func:`all_reduce_counts`
sums integer arrays across ranks exactly (CPU AllReduce only takes float32, so counts travel as 16-bit
limbs that float32 adds without rounding).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Dict, Mapping, Optional

import numpy as np

from cluster.contracts.env import RankEnv, RankEnvError

BACKENDS = {"cpu": "CPU", "ascend": "Ascend", "gpu": "GPU"}
MODES = ("single", "dynamic", "ranktable")


class WorldError(ValueError):
    """The environment does not describe a valid place in a job (worded for the user)."""


@dataclass(frozen=True)
class World:
    mode: str                      # single / dynamic / ranktable
    backend: str                   # cpu / ascend / gpu
    rank: int
    size: int
    device_id: Optional[int]
    role: str = "worker"           # worker / scheduler
    sched: Optional[str] = None    # host:port of the dynamic-cluster scheduler
    rank_table: Optional[str] = None

    @property
    def is_scheduler(self) -> bool:
        return self.role == "scheduler"

    @property
    def distributed(self) -> bool:
        return self.mode != "single"

    @property
    def sync_bn(self) -> bool:
        """SyncBatchNorm where the world is larger than one and the backend has it (Ascend)."""
        return self.size > 1 and self.backend == "ascend"

    def describe(self) -> str:
        where = f" scheduler {self.sched}" if self.sched else (f" rank table {self.rank_table}" if self.rank_table else "")
        return f"{self.mode} world: rank {self.rank}/{self.size}, {self.backend} device {self.device_id}{where}"


def world_from_env(env: Optional[Mapping[str, str]] = None, backend: str = "cpu") -> World:
    """The world this process belongs to, from the environment; raises WorldError on inconsistencies."""
    if backend not in BACKENDS:
        raise WorldError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    try:
        e = RankEnv.from_env(env)
    except RankEnvError as exc:
        raise WorldError(str(exc)) from None
    rank_id = e.rank if e.rank is not None else 0
    if e.role:
        missing = [var for var, value in (("MS_SCHED_HOST", e.sched_host), ("MS_SCHED_PORT", e.sched_port),
                                          ("MS_WORKER_NUM", e.worker_num)) if value is None]
        if missing:
            raise WorldError(f"MS_ROLE={e.role} (dynamic cluster) needs {', '.join(missing)} in the environment")
        workers = e.worker_num
        if e.rank_size is not None and e.rank_size != workers:
            raise WorldError(f"RANK_SIZE={e.rank_size} but MS_WORKER_NUM={workers}: they must agree")
        node = e.node_id if e.node_id is not None else rank_id
        if not e.is_scheduler and not 0 <= node < workers:
            raise WorldError(f"MS_NODE_ID={node}: must lie in 0..{workers - 1} (MS_WORKER_NUM={workers})")
        sched = f"{e.sched_host}:{e.sched_port}"
        return World("dynamic", backend, -1 if e.is_scheduler else node, workers, e.device_id,
                     "scheduler" if e.is_scheduler else "worker", sched=sched)
    table = e.rank_table_file
    if table:
        if not os.path.isfile(table):
            raise WorldError(f"RANK_TABLE_FILE={table}: no such file (make one with `pspnet-cluster ranktable`)")
        if e.rank_size is None:
            raise WorldError("RANK_TABLE_FILE is set but RANK_SIZE is not")
        if not 0 <= rank_id < e.rank_size:
            raise WorldError(f"RANK_ID={rank_id}: must lie in 0..{e.rank_size - 1} (RANK_SIZE={e.rank_size})")
        return World("ranktable", backend, rank_id, e.rank_size, e.device_id if e.device_id is not None else rank_id,
                     rank_table=table)
    if e.rank_size not in (None, 1):
        raise WorldError(f"RANK_SIZE={e.rank_size} but neither MS_ROLE (dynamic cluster) nor RANK_TABLE_FILE "
                         f"(HCCL rank table) is set: start ranks with `pspnet-cluster launch`, or unset RANK_SIZE")
    return World("single", backend, 0, 1, e.device_id)


#: MindSpore 2.10's CPU convolutions hand oneDNN plain NCHW layouts; on CPUs with AVX-512/AMX oneDNN then
#: runs them with its slow "jit_uni_ncsp" path (0.40 s for one 3x3 conv 256->256 on 2x9x9, measured here),
#: where its AVX2 GEMM path takes 0.007 s.  Capping oneDNN's ISA at AVX2 (before MindSpore loads) made a
#: PSPNet training step 30x faster on this machine.
#: MindSpore's CPU collectives give up when a peer is late by more than a few tens of seconds (measured:
#: a 45 s lag fails with "Ring ReduceScatter wait receiving ... failed"), and one rank may compile its graph
#: or validate a minute later than another on a busy host: MS_CPU_COMM_OP_TIMEOUT (seconds) is raised.
#: A value the user set is kept.
CPU_ENV_DEFAULTS = {"ONEDNN_MAX_CPU_ISA": "AVX2", "MS_CPU_COMM_OP_TIMEOUT": "900"}


def tune_cpu_env(backend: str = "cpu", env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Set the CPU defaults above in ``env`` (os.environ) unless set; call before importing MindSpore."""
    env = os.environ if env is None else env
    applied = {}
    if backend == "cpu":
        for key, value in CPU_ENV_DEFAULTS.items():
            if key not in env:
                env[key] = value
                applied[key] = value
    return applied


def set_device(world: World) -> None:
    import mindspore as ms
    target = BACKENDS[world.backend]
    if hasattr(ms, "set_device"):
        if world.device_id is not None and world.backend != "cpu":
            ms.set_device(target, world.device_id)
        else:
            ms.set_device(target)
    else:  # older MindSpore
        kwargs: Dict[str, Any] = {"device_target": target}
        if world.device_id is not None and world.backend != "cpu":
            kwargs["device_id"] = world.device_id
        ms.set_context(**kwargs)


def join(world: World) -> World:
    """Set the MindSpore context (GRAPH_MODE), join the cluster, set data parallelism; returns the world
    with the rank and size MindSpore assigned."""
    import mindspore as ms
    ms.set_context(mode=ms.GRAPH_MODE)
    set_device(world)
    if not world.distributed:
        return world
    from mindspore.communication import get_group_size, get_rank, init
    init()
    if world.is_scheduler:
        return world
    rank, size = get_rank(), get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=size)
    return replace(world, rank=rank, size=size)


# ------------------------------------------------------------------ collectives on host arrays

_REDUCER = None
LIMB_BITS = 16


def _reducer():
    global _REDUCER
    if _REDUCER is None:
        from mindspore import nn, ops

        class _AllReduceSum(nn.Cell):
            def __init__(self):
                super().__init__()
                self.op = ops.AllReduce()

            def construct(self, x):
                return self.op(x)

        _REDUCER = _AllReduceSum()
    return _REDUCER


def all_reduce_float(world: World, values: np.ndarray) -> np.ndarray:
    """Sum a float32 array over all ranks (identity in a single-process world)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if world.size <= 1:
        return values
    from mindspore import Tensor
    return _reducer()(Tensor(values)).asnumpy()


def split_limbs(counts: np.ndarray, limbs: int = 3) -> np.ndarray:
    """Non-negative int64 counts (< 2**48) as ``limbs`` float32 arrays of 16-bit digits."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.size and (counts.min() < 0 or counts.max() >= 1 << (LIMB_BITS * limbs)):
        raise ValueError("counts must lie in 0 .. 2**48 - 1")
    mask = (1 << LIMB_BITS) - 1
    return np.stack([((counts >> (LIMB_BITS * i)) & mask).astype(np.float32) for i in range(limbs)])


def join_limbs(parts: np.ndarray) -> np.ndarray:
    parts = np.rint(np.asarray(parts, dtype=np.float64)).astype(np.int64)
    return sum(parts[i] << (LIMB_BITS * i) for i in range(parts.shape[0]))


def all_reduce_counts(world: World, counts: np.ndarray) -> np.ndarray:
    """Exact sum of int64 counts over ranks: each 16-bit limb summed in float32 stays below 2**24
    for up to 256 ranks, so no count is rounded."""
    counts = np.asarray(counts, dtype=np.int64)
    if world.size <= 1:
        return counts.copy()
    if world.size > 256:
        raise ValueError("all_reduce_counts is exact for up to 256 ranks")
    return join_limbs(all_reduce_float(world, split_limbs(counts)))
