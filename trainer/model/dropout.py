"""Channel dropout (Dropout2d) whose mask is a pure function of (seed, sample, channel).

MindSpore's Dropout keeps a hidden RNG state in the process; a run resumed from a checkpoint restarts
that state, so its losses differ from the uninterrupted run.  Here the mask has no hidden state: the
training loop writes a seed into the net's ``dropout_seed`` Parameter each step (derived from the run
seed, the rank and the global step) and the mask is a hash of (layer salt, seed, sample, channel):

    u = hash(salt, seed, n, c) / M  in [0, 1);   keep = u >= p;   y = x * keep / (1 - p)

The hash is exact integer arithmetic modulo the prime M = 4091, done in float32: every value and product
stays below M*M + M < 2**24, where float32 holds integers exactly, so CPU, GPU and Ascend compute the same
bits with their float units (integer multiply/modulo would be the slow path on some of them).  Only the
run seed, a scalar, is split into two residues with int32 ops.  Each round adds one input, applies an
affine map and cubes the value; all three are bijections modulo M (M % 3 == 2 makes x**3 one), so for a
fixed seed and sample different channels (fewer than M) never collide, and cubing makes neighbouring
seeds and channels give unrelated masks.
In eval mode (``set_train(False)``) the cell is the identity.
"""
from __future__ import annotations

import numpy as np
from mindspore import nn, ops
import mindspore as ms

HASH_MODULUS = 4091
#: (multiplier, increment) per round; both < M, so h * a + b < M * M < 2**24 (exact in float32).
_ROUNDS = ((2741, 1237), (3187, 811), (1597, 3559), (3911, 2113), (2423, 619))


def _mod(x):
    """x mod M for integer-valued float32 0 <= x < 2**24.  x / M may round up to the next integer when x
    lies just below a multiple of M; the remainder is then negative by less than M, and one add fixes it."""
    r = x - ops.floor(x / HASH_MODULUS) * HASH_MODULUS
    return r + (r < 0).astype(x.dtype) * HASH_MODULUS


def _round(h, v, a: int, b: int):
    h = _mod(_mod(h + v) * a + b)
    return _mod(_mod(h * h) * h)


def hash_uniform(seed, n: int, c: int, salt: int):
    """Tensor (n, c) float32 in [0, 1): the stateless random number of each (sample, channel)."""
    seed = seed.astype(ms.int32)
    lo = ops.floor_mod(seed, HASH_MODULUS).astype(ms.float32)
    hi = ops.floor_mod(ops.floor_div(seed, HASH_MODULUS), HASH_MODULUS).astype(ms.float32)
    ni = _mod(ops.arange(n, dtype=ms.float32).reshape(n, 1))
    ci = _mod(ops.arange(c, dtype=ms.float32).reshape(1, c))
    h = _round(lo * 0 + salt % HASH_MODULUS, lo, *_ROUNDS[0])
    h = _round(h, hi, *_ROUNDS[1])
    h = _round(h, ni, *_ROUNDS[2])
    h = _round(h, ci, *_ROUNDS[3])
    h = _round(h, 0, *_ROUNDS[4])
    return h / HASH_MODULUS


def hash_uniform_numpy(seed: int, n: int, c: int, salt: int) -> np.ndarray:
    """The same numbers computed with NumPy (int64), as a reference for tests and tools."""
    m = HASH_MODULUS

    def rnd(h, v, a, b):
        h = ((h + v) % m * a + b) % m
        return (h * h % m) * h % m

    seed = int(seed)
    lo, hi = seed % m, (seed // m) % m
    # the int32 floor_div/floor_mod of the seed above behave like Python's for the int32 range
    ni = np.arange(n, dtype=np.int64).reshape(n, 1)
    ci = np.arange(c, dtype=np.int64).reshape(1, c)
    h = rnd(np.int64(salt % m), lo, *_ROUNDS[0])
    h = rnd(h, hi, *_ROUNDS[1])
    h = rnd(h, ni % m, *_ROUNDS[2])
    h = rnd(h, ci % m, *_ROUNDS[3])
    h = rnd(h, 0, *_ROUNDS[4])
    return (np.broadcast_to(h, (n, c)).astype(np.float64) / m).astype(np.float32)


class SeededDropout2d(nn.Cell):
    """Dropout2d with a stateless mask: ``construct(x, seed)``; ``seed`` is an int32 scalar tensor.

    ``salt`` tells layers apart, so two dropout layers fed the same seed draw different masks.
    """

    def __init__(self, p: float = 0.1, salt: int = 0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)
        self.scale = 1.0 / (1.0 - self.p)
        self.salt = int(salt)

    def construct(self, x, seed):
        if not self.training or self.p == 0.0:
            return x
        n = x.shape[0]
        c = x.shape[1]
        u = hash_uniform(seed, n, c, self.salt)
        keep = (u >= self.p).astype(x.dtype) * self.scale
        return x * keep.reshape(n, c, 1, 1)


def dropout_seed_for(seed: int, rank: int, global_step: int) -> int:
    """The value the training loop writes into ``net.dropout_seed`` before step ``global_step``.

    A hash of (run seed, rank, global step) in [0, M*M): reproducible across processes and restarts,
    different on each rank and each step.  Masks depend on the seed modulo M*M (~1.07e9).
    """
    import hashlib
    digest = hashlib.blake2b(f"{int(seed)}:{int(rank)}:{int(global_step)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (HASH_MODULUS * HASH_MODULUS)
