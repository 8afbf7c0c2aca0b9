"""Seeded channel dropout: the mask is a pure function of (seed, sample, channel), for exact resume."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import Parameter, Tensor, nn

from trainer.model.dropout import (HASH_MODULUS, SeededDropout2d, dropout_seed_for, hash_uniform,
                                   hash_uniform_numpy)


@pytest.fixture(scope="module", autouse=True)
def _graph_mode_cpu():
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")


class SeededNet(nn.Cell):
    """Holds the seed as a non-trainable Parameter, as PSPNet does; the test writes it with set_data."""

    def __init__(self, p=0.1, salt=0):
        super().__init__()
        self.drop = SeededDropout2d(p, salt)
        self.dropout_seed = Parameter(Tensor(0, ms.int32), name="dropout_seed", requires_grad=False)

    def construct(self, x):
        return self.drop(x, self.dropout_seed)


def run(net, x, seed):
    net.dropout_seed.set_data(Tensor(seed, ms.int32))
    return net(Tensor(x)).asnumpy()


@pytest.fixture(scope="module")
def net():
    n = SeededNet(0.1, salt=1)
    n.set_train(True)
    return n


X = np.ones((4, 4096, 2, 2), np.float32)


def test_same_seed_same_output_different_seed_different_mask(net):
    a, b, c = run(net, X, 5), run(net, X, 6), run(net, X, 5)
    assert np.array_equal(a, c)
    assert not np.array_equal(a, b)
    # the graph read the updated Parameter: compare with the mask computed on the host
    keep = hash_uniform_numpy(6, 4, 4096, salt=1) >= 0.1
    np.testing.assert_array_equal(b[:, :, 0, 0] != 0, keep)


def test_whole_channels_dropped_and_kept_ones_scaled(net):
    y = run(net, X, 1234)
    per_channel = y.reshape(4, 4096, -1)
    assert (per_channel == per_channel[:, :, :1]).all()        # one decision per (sample, channel)
    values = np.unique(y)
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.9, rel=1e-6)


def test_drop_rate_is_close_to_p(net):
    dropped = [(run(net, X, s)[:, :, 0, 0] == 0).mean() for s in (1, 2, 3)]
    for rate in dropped:                  # 16384 channels: binomial std 0.0023
        assert abs(rate - 0.1) < 0.012
    # masks of different samples in one batch differ
    y = run(net, X, 9)[:, :, 0, 0]
    assert not np.array_equal(y[0], y[1])


def test_identity_in_eval_mode():
    n = SeededNet(0.1)
    n.set_train(False)
    x = np.random.default_rng(0).standard_normal((2, 16, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(run(n, x, 3), x)


def test_salt_separates_layers():
    u1 = hash_uniform_numpy(42, 2, 512, salt=1)
    u2 = hash_uniform_numpy(42, 2, 512, salt=2)
    assert not np.array_equal(u1 >= 0.1, u2 >= 0.1)


def test_tensor_hash_equals_numpy_reference_incl_large_and_negative_seeds():
    for seed in (0, 1, HASH_MODULUS + 3, 2**31 - 1, -7):
        got = hash_uniform(Tensor(seed, ms.int32), 3, 64, 5).asnumpy()
        np.testing.assert_array_equal(got, hash_uniform_numpy(seed, 3, 64, 5))
        assert (got >= 0).all() and (got < 1).all()


def test_channels_never_collide_for_one_seed_and_sample():
    u = hash_uniform_numpy(77, 1, HASH_MODULUS, salt=0)
    assert len(np.unique(u)) == HASH_MODULUS


def test_float32_modulo_is_exact_over_the_whole_range_the_hash_uses():
    from trainer.model.dropout import _mod
    x = np.arange(0, HASH_MODULUS * HASH_MODULUS + HASH_MODULUS, 997, dtype=np.float32)
    x = np.concatenate([x, np.arange(1, 40, dtype=np.float32) * HASH_MODULUS - 1])   # just below multiples
    got = _mod(Tensor(x)).asnumpy().astype(np.int64)
    np.testing.assert_array_equal(got, x.astype(np.int64) % HASH_MODULUS)


def test_step_seed_is_reproducible_and_varies_with_rank_and_step():
    assert dropout_seed_for(1234, 0, 10) == dropout_seed_for(1234, 0, 10)
    values = {dropout_seed_for(1234, r, s) for r in range(4) for s in range(200)}
    assert len(values) == 800
    assert all(0 <= v < 2**31 for v in values)
    assert dropout_seed_for(1, 0, 10) != dropout_seed_for(2, 0, 10)


def test_invalid_probability_is_rejected():
    with pytest.raises(ValueError, match="dropout probability"):
        SeededDropout2d(1.0)
