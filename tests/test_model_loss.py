"""Loss: softmax cross-entropy with ignore label 255, main + aux_weight * aux, in GRAPH_MODE."""
import math

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor, nn, ops

from trainer.model import build_loss
from trainer.model.loss import LogSoftmaxGatherCE, PSPLoss, SegCrossEntropy


@pytest.fixture(scope="module", autouse=True)
def _graph_mode_cpu():
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")


def hand_case():
    """2 classes on a 1x2x2 map.  Logits (0, 0): p = 1/2; logits (ln 3, 0): p(class 0) = 3/4."""
    l3 = math.log(3.0)
    logits = np.array([[[[0.0, l3], [l3, 0.0]],        # class 0
                        [[0.0, 0.0], [0.0, 0.0]]]],    # class 1
                      np.float32)
    labels = np.array([[[0, 0], [1, 255]]], np.int32)
    # pixel (0,0): -ln 1/2; (0,1): -ln 3/4; (1,0): class 1 with p = 1/4: -ln 1/4; (1,1) ignored
    expected = (math.log(2.0) + math.log(4.0 / 3.0) + math.log(4.0)) / 3.0
    return logits, labels, expected


def test_cross_entropy_ignores_255_hand_computed():
    logits, labels, expected = hand_case()
    got = float(SegCrossEntropy(255)(Tensor(logits), Tensor(labels)).asnumpy())
    assert got == pytest.approx(expected, rel=1e-5)
    # the ignored pixel's logits do not matter
    logits[0, :, 1, 1] = [50.0, -50.0]
    assert float(SegCrossEntropy(255)(Tensor(logits), Tensor(labels)).asnumpy()) == pytest.approx(expected, rel=1e-5)


def test_main_plus_weighted_aux():
    logits, labels, expected = hand_case()
    aux = np.zeros_like(logits)                           # p = 1/2 everywhere: ln 2 per valid pixel
    loss = PSPLoss(255, 0.4)((Tensor(logits), Tensor(aux)), Tensor(labels))
    assert float(loss.asnumpy()) == pytest.approx(expected + 0.4 * math.log(2.0), rel=1e-5)
    # eval-mode output (main only) gives the main term
    assert float(PSPLoss(255, 0.4)(Tensor(logits), Tensor(labels)).asnumpy()) == pytest.approx(expected, rel=1e-5)


def test_batch_without_valid_pixel_is_zero_with_zero_gradient():
    logits = Tensor(np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32))
    labels = Tensor(np.full((2, 4, 4), 255, np.int32))
    ce = SegCrossEntropy(255)
    assert float(ce(logits, labels).asnumpy()) == 0.0
    grad = ops.GradOperation()(ce)(logits, labels).asnumpy()
    assert np.isfinite(grad).all() and not grad.any()


def test_gradient_is_zero_at_ignored_pixels_and_graph_mode_tuple_input():
    class WithAux(nn.Cell):
        def __init__(self):
            super().__init__()
            self.loss = PSPLoss(255, 0.4)

        def construct(self, main, aux, labels):
            return self.loss((main, aux), labels)

    rng = np.random.default_rng(1)
    main = Tensor(rng.standard_normal((1, 4, 5, 5)).astype(np.float32))
    aux = Tensor(rng.standard_normal((1, 4, 5, 5)).astype(np.float32))
    labels = rng.integers(0, 4, (1, 5, 5)).astype(np.int32)
    labels[0, 2, :] = 255
    g_main, g_aux = ops.GradOperation(get_all=True)(WithAux())(main, aux, Tensor(labels))[:2]
    assert not g_main.asnumpy()[0, :, 2, :].any() and not g_aux.asnumpy()[0, :, 2, :].any()
    assert g_main.asnumpy()[0, :, 0, :].any()
    # aux gradient is 0.4 x what the same logits get as main
    g_same_as_main = ops.GradOperation(get_all=True)(WithAux())(aux, main, Tensor(labels))[0]
    np.testing.assert_allclose(g_aux.asnumpy(), 0.4 * g_same_as_main.asnumpy(), rtol=1e-5, atol=1e-8)


def test_build_loss_reads_config():
    loss = build_loss({"aux": True, "aux_weight": 0.25, "ignore_label": 7})
    assert loss.aux_weight == 0.25 and loss.ce.ignore_label == 7
    assert build_loss({"aux": False, "aux_weight": 0.4}).aux_weight == 0.0


@pytest.mark.parametrize("shape", [(2, 21, 17, 13), (1, 3, 8, 8)])
def test_fused_loss_equals_the_log_softmax_formulation_values_and_gradients(shape):
    rng = np.random.default_rng(sum(shape))
    n, c, h, w = shape
    logits = Tensor((3 * rng.standard_normal(shape)).astype(np.float32))
    labels = rng.integers(0, c, (n, h, w)).astype(np.int32)
    labels[rng.random((n, h, w)) < 0.2] = 255
    labels = Tensor(labels)
    ours, ref = SegCrossEntropy(255), LogSoftmaxGatherCE()
    assert float(ours(logits, labels).asnumpy()) == pytest.approx(float(ref(logits, labels).asnumpy()), rel=1e-5)
    g_ours = ops.GradOperation()(ours)(logits, labels).asnumpy()
    g_ref = ops.GradOperation()(ref)(logits, labels).asnumpy()
    np.testing.assert_allclose(g_ours, g_ref, rtol=1e-4, atol=1e-7)
    total, count = ours.sums(logits, labels)
    assert float(count.asnumpy()) == float((labels.asnumpy() != 255).sum())
