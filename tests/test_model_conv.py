"""The CPU im2col convolution equals MindSpore's native convolution, forward and backward."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor, nn, ops

from trainer.model.conv import Conv2d, resolve_impl


@pytest.fixture(scope="module", autouse=True)
def _graph_mode_cpu():
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")


class Grads(nn.Cell):
    """(d/dx, d/dweight[, d/dbias]) of sum(conv(x) * r) for a fixed random r."""

    def __init__(self, conv, r):
        super().__init__()
        self.conv = conv
        self.r = r
        self.weights = conv.trainable_params()
        self.grad = ops.GradOperation(get_all=True, get_by_list=True)

    def construct(self, x):
        def loss(inp):
            return (self.conv(inp) * self.r).sum()
        return self.grad(loss, self.weights)(x)


def pair(cin, cout, k, stride, padding, dilation, bias):
    native = Conv2d(cin, cout, k, stride, padding, dilation, bias, impl="native")
    fast = Conv2d(cin, cout, k, stride, padding, dilation, bias, impl="im2col")
    rng = np.random.default_rng(cin * 100 + k * 10 + stride + dilation)
    native.weight.set_data(Tensor(rng.standard_normal(native.weight.shape).astype(np.float32)))
    fast.weight.set_data(native.weight.data.copy())
    if bias:
        native.bias.set_data(Tensor(rng.standard_normal(native.bias.shape).astype(np.float32)))
        fast.bias.set_data(native.bias.data.copy())
    return native, fast


@pytest.mark.parametrize("cin,cout,k,stride,padding,dilation,bias,size", [
    (5, 7, 3, 1, 1, 1, False, 9),      # the 3x3 convs of the heads and of layer1
    (4, 6, 3, 2, 1, 1, False, 11),     # stem conv1 / layer2.0.conv2: stride 2 at an odd size
    (6, 3, 3, 1, 2, 2, False, 9),      # layer3: dilation 2
    (3, 4, 3, 1, 4, 4, True, 10),      # layer4: dilation 4 (bias: the generic case)
    (8, 5, 1, 2, 0, 1, False, 9),      # layer2 downsample: strided 1x1
])
def test_im2col_matches_native(cin, cout, k, stride, padding, dilation, bias, size):
    native, fast = pair(cin, cout, k, stride, padding, dilation, bias)
    assert fast.im2col and not native.im2col
    rng = np.random.default_rng(size)
    x = Tensor(rng.standard_normal((2, cin, size, size)).astype(np.float32))
    y0, y1 = native(x).asnumpy(), fast(x).asnumpy()
    assert y0.shape == y1.shape == (2, cout, (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1,
                                    (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1)
    np.testing.assert_allclose(y1, y0, rtol=1e-4, atol=1e-4)
    r = Tensor(rng.standard_normal(y0.shape).astype(np.float32))
    (gx0,), gw0 = Grads(native, r)(x)
    (gx1,), gw1 = Grads(fast, r)(x)
    np.testing.assert_allclose(gx1.asnumpy(), gx0.asnumpy(), rtol=1e-4, atol=1e-4)
    for a, b in zip(gw1, gw0):
        np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=1e-4, atol=1e-3)


def test_parameters_and_names_do_not_depend_on_the_implementation():
    native, fast = pair(4, 6, 3, 1, 1, 1, True)
    assert [(p.name, p.shape) for p in native.get_parameters()] == \
           [(p.name, p.shape) for p in fast.get_parameters()]
    assert isinstance(fast, nn.Conv2d)
    # a plain 1x1 stride-1 conv is already fast natively: no im2col for it
    assert not Conv2d(4, 6, 1, impl="im2col").im2col


def test_auto_picks_im2col_on_cpu_unless_onednn_is_capped(monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert resolve_impl("auto") == "im2col"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert resolve_impl("auto") == "im2col"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert resolve_impl("auto") == "native"
    assert resolve_impl("native") == "native"
    with pytest.raises(ValueError, match="conv implementation"):
        resolve_impl("winograd")
