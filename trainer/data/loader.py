"""Per-rank batches with mindspore.dataset: the interface the training loop uses.

- :func:`steps_per_epoch` ``(cfg, world_size)``: full batches per rank and epoch (remainder dropped;
  capped by ``max_steps_per_epoch`` when > 0).
- :func:`train_batches` ``(cfg, rank, world_size, epoch, skip_steps=0)``: a :class:`BatchIterator` of
  ``(images float32 [B,3,C,C], labels int32 [B,C,C])`` numpy batches, exactly
  ``steps_per_epoch - skip_steps`` of them.
- :func:`val_batches` ``(cfg, rank, world_size)``: centre-cropped batches of this rank's shard of the
  val list.  Every rank gets the same number of full batches; the places past the end of the list are
  filled with blank samples (image = mean, i.e. 0 after normalisation, labels all ``ignore_label``),
  which metrics and loss ignore.  Across ranks every val sample is seen exactly once.

Determinism: the epoch's order is a permutation drawn from ``(seed, epoch)``; sample ``i`` of the list
is augmented with a generator seeded by ``(seed, epoch, i)``.  So the batches are a function of
``(seed, rank, world_size, epoch)`` only, whatever the number of workers, and ``skip_steps=k`` gives
exactly the batches from k+1 on, without decoding the first k (the ``skip`` sits before the decoding
``map``).  Sharding: the epoch's order is cut to a multiple of the world size and read through
``GeneratorDataset(num_shards=world_size, shard_id=rank)``, so rank r gets places r, r+W, r+2W, ...:
different ranks never see the same sample in an epoch.

Data wait: the iterator measures the time the training loop spends blocked in ``next()``:
``it.last_wait_s`` (the last batch), ``it.wait_s`` (total so far), ``it.batches``; the share of step
time spent waiting is ``it.wait_s / epoch time``.  ``data_wait_seconds(it)`` returns ``it.wait_s``.
The first ``next()`` includes starting the pipeline's workers (``it.first_wait_s``).

Decoding and augmentation run in ``cfg["workers"]`` parallel workers.  They are threads by default:
OpenCV releases the GIL, and worker processes (``python_multiprocessing``, chosen with
``PSPNET_DATA_PROCESSES=1``) cost about a second to stop at the end of every epoch, which is more than
a whole epoch of decoding on small data sets (see docs/data.md for figures).

Two pipelines produce the same batches (a test checks it): ``mindspore`` (mindspore.dataset, as above)
and ``threads`` (a thread pool of ``cfg["workers"]`` that decodes the next batches ahead of the
consumer).  ``PSPNET_DATA_PIPELINE`` picks one; by default a rank of a MindSpore dynamic cluster
(``MS_ROLE`` set) uses ``threads``: with mindspore.dataset feeding it, MindSpore 2.10's CPU dynamic
cluster stalls at the third training step (both ranks blocked in the graph run; reproduced with the
launcher and with a hand-started scheduler + 2 workers), while the same job with the thread pipeline runs
to the end.  A single process uses ``mindspore``.
"""
from __future__ import annotations

import math
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from cluster.contracts.env import RankEnv

from .lists import DataError, Sample, load_sample, read_list
from .synth import ensure_dataset
from .transforms import TrainTransform, ValTransform, from_config

Batch = Tuple[np.ndarray, np.ndarray]

_LIST_CACHE: Dict[Tuple[str, str, str, float, int], List[Sample]] = {}


# ------------------------------------------------------------------------------------------ samples
def samples(cfg: Dict[str, Any], split: str) -> List[Sample]:
    """The samples of the train or val list of a config (generating the data set first if asked)."""
    root = ensure_dataset(cfg)
    list_path = root / cfg["train_list" if split == "train" else "val_list"]
    try:
        st = list_path.stat()
    except FileNotFoundError:
        raise DataError(f"{list_path}: list file not found (check data_root and train_list/val_list, or set "
                        f"synthesize_if_missing=true to generate a small data set there)") from None
    key = (str(list_path), str(root), cfg.get("dataset", "voc2012"), st.st_mtime, st.st_size)
    if key not in _LIST_CACHE:
        _LIST_CACHE[key] = read_list(list_path, root, cfg.get("dataset", "voc2012"))
    return _LIST_CACHE[key]


def _seed(cfg: Dict[str, Any]) -> int:
    return int(cfg.get("seed", 0)) & 0xFFFFFFFF


def epoch_order(cfg: Dict[str, Any], epoch: int, n: int) -> np.ndarray:
    """Order of the ``n`` training samples in ``epoch``: a permutation drawn from (seed, epoch)."""
    return np.random.default_rng([_seed(cfg), int(epoch), 0x5EED]).permutation(n)


def steps_per_epoch(cfg: Dict[str, Any], world_size: int) -> int:
    """Full batches per rank and epoch: (len(train) // world_size) // batch_size, capped by max_steps_per_epoch."""
    n = len(samples(cfg, "train"))
    steps = (n // int(world_size)) // int(cfg["batch_size"])
    if steps < 1:
        raise DataError(f"{cfg['train_list']}: {n} training samples are too few for {world_size} ranks x "
                        f"batch_size {cfg['batch_size']}: each rank needs at least one full batch")
    cap = int(cfg.get("max_steps_per_epoch", 0) or 0)
    return min(steps, cap) if cap > 0 else steps


def train_indices(cfg: Dict[str, Any], rank: int, world_size: int, epoch: int) -> np.ndarray:
    """List indices of the samples that ``rank`` trains on in ``epoch``, in order (steps x batch of them)."""
    n = len(samples(cfg, "train"))
    order = epoch_order(cfg, epoch, n)[: (n // world_size) * world_size]
    used = steps_per_epoch(cfg, world_size) * int(cfg["batch_size"])
    return order[rank::world_size][:used]


# -------------------------------------------------------------------------- per-sample work (workers)
class _Source:
    """Random-access source of (sample index, epoch) rows: cheap, nothing decoded here."""

    def __init__(self, order: Sequence[int], epoch: int) -> None:
        self.order = np.asarray(order, np.int64)
        self.epoch = int(epoch)

    def __getitem__(self, i: int) -> Tuple[np.ndarray]:
        return (np.array([self.order[i], self.epoch], np.int64),)

    def __len__(self) -> int:
        return len(self.order)


class _TrainSample:
    """Decode and augment one training sample; the augmentation RNG is seeded by (seed, epoch, index)."""

    def __init__(self, items: List[Sample], transform: TrainTransform, seed: int, classes: int,
                 dataset: str, ignore: int) -> None:
        self.items, self.transform, self.seed = items, transform, seed
        self.classes, self.dataset, self.ignore = classes, dataset, ignore

    def __call__(self, row: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        index, epoch = int(row[0]), int(row[1])
        image, label = load_sample(self.items[index], self.classes, self.dataset, self.ignore)
        return self.transform(image, label, np.random.default_rng([self.seed, epoch, index]))


class _ValSample:
    """Decode and centre-crop one val sample; an index past the list is a blank (mean image, ignore labels)."""

    def __init__(self, items: List[Sample], transform: ValTransform, classes: int, dataset: str,
                 ignore: int) -> None:
        self.items, self.transform = items, transform
        self.classes, self.dataset, self.ignore = classes, dataset, ignore

    def __call__(self, row: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        index = int(row[0])
        c = self.transform.crop
        if index >= len(self.items):
            return np.zeros((3, c, c), np.float32), np.full((c, c), self.ignore, np.int32)
        image, label = load_sample(self.items[index], self.classes, self.dataset, self.ignore)
        return self.transform(image, label)


# ------------------------------------------------------------------------------------------ iterator
class BatchIterator:
    """Iterator of numpy batches that measures how long its consumer waits for each one."""

    def __init__(self, make: Optional[Any], total: int) -> None:
        self._make = make          # () -> mindspore dataset; built on the first next()
        self._it: Optional[Any] = None
        self.total = int(total)
        self.batches = 0
        self.wait_s = 0.0
        self.last_wait_s = 0.0
        self.first_wait_s = 0.0

    def __iter__(self) -> "BatchIterator":
        return self

    def __len__(self) -> int:
        return self.total - self.batches

    def __next__(self) -> Batch:
        if self.batches >= self.total:
            self.close()
            raise StopIteration
        t0 = time.perf_counter()
        try:
            if self._it is None:
                self._it = self._make().create_tuple_iterator(output_numpy=True, num_epochs=1)
            try:
                images, labels = next(self._it)
            except StopIteration:
                self.close()
                raise DataError(f"the data pipeline ended after {self.batches} of {self.total} batches") from None
            except RuntimeError as exc:
                self.close()
                raise _data_error(exc) from None
        finally:
            self.last_wait_s = time.perf_counter() - t0
            self.wait_s += self.last_wait_s
            if self.batches == 0:
                self.first_wait_s = self.last_wait_s
        self.batches += 1
        return images, labels

    def close(self) -> None:
        """Stop the pipeline's workers.  Done by the ``next()`` after the last batch, by leaving a ``with``
        block, or here; not inside the last batch's ``next()``, so that a step's time never includes it."""
        if self._it is not None:
            try:
                self._it.stop()
            except Exception:  # noqa: BLE001 - stopping a finished pipeline must never fail the caller
                pass
            self._it = None

    def __enter__(self) -> "BatchIterator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def data_wait_seconds(it: BatchIterator) -> float:
    """Seconds the consumer of ``it`` has spent blocked waiting for batches."""
    return it.wait_s


def _data_error(exc: RuntimeError) -> Exception:
    """A DataError raised in a worker comes back wrapped in MindSpore's RuntimeError: unwrap it."""
    for line in reversed(str(exc).splitlines()):   # the last one is the exception's own line
        line = line.strip()
        if line.startswith(f"{DataError.__module__}.DataError:"):
            return DataError(line.split("DataError:", 1)[1].strip())
    return exc


#: Set to 1 to decode in worker processes instead of threads (see the module docstring).
PROCESSES_ENV = "PSPNET_DATA_PROCESSES"
PIPELINE_ENV = "PSPNET_DATA_PIPELINE"
PIPELINES = ("mindspore", "threads")


def pipeline_kind(env: Optional[Dict[str, str]] = None) -> str:
    """``PSPNET_DATA_PIPELINE`` if set, else ``threads`` inside a dynamic cluster and ``mindspore`` outside."""
    env = os.environ if env is None else env
    kind = env.get(PIPELINE_ENV, "").strip().lower()
    if kind:
        if kind not in PIPELINES:
            raise ValueError(f"{PIPELINE_ENV}={kind!r}: use one of {', '.join(PIPELINES)}")
        return kind
    return "threads" if RankEnv.from_env(env).role else "mindspore"


class _ThreadPipeline:
    """Decode rows with a thread pool, ``prefetch`` batches ahead of the consumer; same batches as the
    mindspore.dataset pipeline (each sample's randomness comes from its own seed, not from the worker)."""

    def __init__(self, rows: Sequence[np.ndarray], fn: Any, batch: int, workers: int, prefetch: int = 2) -> None:
        self.rows, self.fn, self.batch = list(rows), fn, int(batch)
        self.pool: Optional[ThreadPoolExecutor] = ThreadPoolExecutor(max(1, int(workers)),
                                                                     thread_name_prefix="pspnet-data")
        self.pending: deque = deque()
        self.submitted = 0
        for _ in range(max(1, int(prefetch))):
            self._submit()

    def _submit(self) -> None:
        if self.pool is None or self.submitted + self.batch > len(self.rows):
            return
        chunk = self.rows[self.submitted:self.submitted + self.batch]
        self.submitted += self.batch
        self.pending.append([self.pool.submit(self.fn, row) for row in chunk])

    def create_tuple_iterator(self, **_: Any) -> "_ThreadPipeline":
        return self

    def __next__(self) -> Batch:
        if not self.pending:
            raise StopIteration
        futures = self.pending.popleft()
        self._submit()
        out = [f.result() for f in futures]
        return (np.stack([o[0] for o in out]).astype(np.float32, copy=False),
                np.stack([o[1] for o in out]).astype(np.int32, copy=False))

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None
            self.pending.clear()


def _shard_rows(order: Sequence[int], epoch: int, rank: int, world_size: int, start: int, count: int) -> List[np.ndarray]:
    """Rows of rank ``rank`` (places r, r+W, ...), ``count`` of them from ``start``: what the sharded
    GeneratorDataset followed by skip/take yields."""
    mine = np.asarray(order, np.int64)[rank::world_size][start:start + count]
    return [np.array([i, epoch], np.int64) for i in mine]


def _map_options(cfg: Dict[str, Any]) -> Dict[str, Any]:
    # mindspore.dataset refuses more workers than CPU cores
    workers = max(1, min(int(cfg.get("workers", 1)), os.cpu_count() or 1))
    processes = workers > 1 and os.environ.get(PROCESSES_ENV, "0") not in ("", "0")
    return {"num_parallel_workers": workers, "python_multiprocessing": processes}


def _ds():
    import mindspore.dataset as ds   # only here: the rest of trainer.data works without MindSpore
    return ds


# --------------------------------------------------------------------------------------- the batches
def train_batches(cfg: Dict[str, Any], rank: int, world_size: int, epoch: int,
                  skip_steps: int = 0) -> BatchIterator:
    """This rank's training batches of ``epoch``: ``steps_per_epoch - skip_steps`` of them, deterministic."""
    rank, world_size, batch = int(rank), int(world_size), int(cfg["batch_size"])
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    items = samples(cfg, "train")
    steps = steps_per_epoch(cfg, world_size)
    if not 0 <= skip_steps <= steps:
        raise ValueError(f"skip_steps={skip_steps} is outside 0..{steps} (steps per epoch)")
    left = steps - int(skip_steps)
    order = epoch_order(cfg, epoch, len(items))[: (len(items) // world_size) * world_size]
    train_tf, _ = from_config(cfg)
    fn = _TrainSample(items, train_tf, _seed(cfg), int(cfg["classes"]), cfg.get("dataset", "voc2012"),
                      int(cfg.get("ignore_label", 255)))

    def make():
        if pipeline_kind() == "threads":
            rows = _shard_rows(order, epoch, rank, world_size, int(skip_steps) * batch, left * batch)
            return _ThreadPipeline(rows, fn, batch, _map_options(cfg)["num_parallel_workers"])
        ds = _ds()
        d = ds.GeneratorDataset(_Source(order, epoch), column_names=["row"], shuffle=False,
                                num_shards=world_size, shard_id=rank)
        d = d.skip(int(skip_steps) * batch).take(left * batch)    # before map: skipped rows are not decoded
        d = d.map(fn, input_columns=["row"], output_columns=["image", "label"], **_map_options(cfg))
        return d.batch(batch, drop_remainder=True)

    return BatchIterator(make, left)


def val_steps(cfg: Dict[str, Any], world_size: int) -> int:
    """Val batches per rank (the same on every rank): ceil(ceil(len(val) / world_size) / batch_size_val)."""
    n = len(samples(cfg, "val"))
    return math.ceil(math.ceil(n / int(world_size)) / int(cfg["batch_size_val"]))


def val_batches(cfg: Dict[str, Any], rank: int, world_size: int) -> BatchIterator:
    """This rank's centre-cropped val batches; rank r holds list entries r, r+W, ... and blanks past the end."""
    rank, world_size, batch = int(rank), int(world_size), int(cfg["batch_size_val"])
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    items = samples(cfg, "val")
    steps = val_steps(cfg, world_size)
    order = np.arange(steps * batch * world_size)       # entries >= len(items) are blanks
    _, val_tf = from_config(cfg)
    fn = _ValSample(items, val_tf, int(cfg["classes"]), cfg.get("dataset", "voc2012"),
                    int(cfg.get("ignore_label", 255)))

    def make():
        if pipeline_kind() == "threads":
            rows = _shard_rows(order, 0, rank, world_size, 0, steps * batch)
            return _ThreadPipeline(rows, fn, batch, _map_options(cfg)["num_parallel_workers"])
        ds = _ds()
        d = ds.GeneratorDataset(_Source(order, 0), column_names=["row"], shuffle=False,
                                num_shards=world_size, shard_id=rank)
        d = d.map(fn, input_columns=["row"], output_columns=["image", "label"], **_map_options(cfg))
        return d.batch(batch, drop_remainder=True)

    return BatchIterator(make, steps)


def val_indices(cfg: Dict[str, Any], rank: int, world_size: int) -> np.ndarray:
    """List indices of the real (not blank) val samples of ``rank``, in order."""
    n = len(samples(cfg, "val"))
    return np.arange(rank, n, world_size)
