"""Output shapes of the real network in GRAPH_MODE at several crops (batch 1, CPU), and the
train/eval output contract the training loop relies on."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor

from trainer.model import PSPNet, count_params
from trainer.model_info import _probe_cell

pytestmark = pytest.mark.slow


def stride8(n: int) -> int:
    """Spatial size after the stem conv (s2), the max-pool (s2) and layer2 (s2): k=3, pad=1 each."""
    for _ in range(3):
        n = (n - 1) // 2 + 1
    return n


@pytest.fixture(scope="module", autouse=True)
def _graph_mode_cpu():
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")


@pytest.fixture(scope="module")
def net():
    return PSPNet(classes=5, aux=True, init_seed=3)


def _x(crop: int, seed: int = 0) -> Tensor:
    return Tensor(np.random.default_rng(seed).standard_normal((1, 3, crop, crop)).astype(np.float32))


@pytest.mark.parametrize("crop", [97, 65])
def test_train_mode_returns_main_and_aux_at_input_size(net, crop):
    net.set_train(True)
    out = net(_x(crop))
    assert isinstance(out, tuple) and len(out) == 2
    main, aux = out
    assert main.shape == (1, 5, crop, crop) and aux.shape == (1, 5, crop, crop)
    assert np.isfinite(main.asnumpy()).all() and np.isfinite(aux.asnumpy()).all()


def test_parameter_count_does_not_depend_on_crop(net):
    # the module's net has run at other crops by now (or runs here): the count is unchanged
    net.set_train(True)
    net(_x(65))
    assert count_params(net)["total"] == count_params(PSPNet(classes=5, aux=True))["total"]


def test_eval_mode_returns_main_only_and_is_deterministic(net):
    net.set_train(False)
    net.dropout_seed.set_data(Tensor(1, ms.int32))
    a = net(_x(65, seed=1))
    net.dropout_seed.set_data(Tensor(2, ms.int32))
    b = net(_x(65, seed=1))
    assert not isinstance(a, tuple)
    assert a.shape == (1, 5, 65, 65)
    assert np.array_equal(a.asnumpy(), b.asnumpy())  # no dropout in eval mode
    net.set_train(True)


def test_train_output_is_a_pure_function_of_the_dropout_seed(net):
    net.set_train(True)
    x = _x(65, seed=2)
    net.dropout_seed.set_data(Tensor(11, ms.int32))
    m1, a1 = net(x)
    net.dropout_seed.set_data(Tensor(12, ms.int32))
    m2, _ = net(x)
    net.dropout_seed.set_data(Tensor(11, ms.int32))
    m3, a3 = net(x)
    assert np.array_equal(m1.asnumpy(), m3.asnumpy()) and np.array_equal(a1.asnumpy(), a3.asnumpy())
    assert not np.array_equal(m1.asnumpy(), m2.asnumpy())


def test_probe_shapes_at_odd_crop(net):
    probe = _probe_cell(net)
    probe.set_train(False)
    c3, c4, main, aux = probe(_x(71))
    s = stride8(71)
    assert s == 9
    assert c3.shape == (1, 1024, s, s) and c4.shape == (1, 2048, s, s)
    assert main.shape == (1, 5, 71, 71) and aux.shape == (1, 5, 71, 71)
    net.set_train(True)


def test_no_aux_net_returns_main_in_train_mode():
    net = PSPNet(classes=3, aux=False)
    net.set_train(True)
    out = net(_x(65))
    assert not isinstance(out, tuple) and out.shape == (1, 3, 65, 65)
