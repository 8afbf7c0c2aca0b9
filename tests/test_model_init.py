"""Initialisation: a randomly initialised PSPNet starts at the chance loss, and its weights follow the
conventions the training recipe assumes (Kaiming fan_out convs, BN gamma 1 / beta 0 except the last BN of
each bottleneck, small classifiers).

Why it matters: with a classifier drawn like the other convs (std sqrt(2/fan_out) = 0.31 for 21 classes),
the first logits have a standard deviation near 5, the first losses are 10-25 instead of ~4.3, the first
gradients are huge, and the conv weights in front of every BN grow by orders of magnitude within a few
steps; the BN running statistics cannot follow, and the eval-mode loss explodes.
"""
import math

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor, nn

from trainer.model import PSPLoss, PSPNet
from trainer.model.resnet import Bottleneck

CLASSES = 21


@pytest.fixture(scope="module", autouse=True)
def _graph_mode_cpu():
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")


@pytest.fixture(scope="module")
def net():
    return PSPNet(classes=CLASSES, aux=True, init_seed=7)


def test_classifiers_start_small_and_unbiased(net):
    for head in (net.head, net.aux_head):
        w = head.classifier.weight.asnumpy()
        assert 0.007 < w.std() < 0.013, w.std()
        assert np.all(head.classifier.bias.asnumpy() == 0)


def test_convs_are_kaiming_fan_out_and_bn_starts_as_identity(net):
    w = net.head.conv.weight.asnumpy()                    # 3x3 4096 -> 512
    assert w.std() == pytest.approx(math.sqrt(2.0 / (512 * 9)), rel=0.02)
    w = net.backbone.conv1.weight.asnumpy()               # 3x3 3 -> 64
    assert w.std() == pytest.approx(math.sqrt(2.0 / (64 * 9)), rel=0.1)
    assert np.all(net.backbone.bn1.gamma.asnumpy() == 1) and np.all(net.backbone.bn1.beta.asnumpy() == 0)
    blocks = [c for _, c in net.cells_and_names() if isinstance(c, Bottleneck)]
    assert len(blocks) == 16
    for b in blocks:
        # the residual branch starts at zero: every block is the identity (or its projection) at step 0
        assert np.all(b.bn3.gamma.asnumpy() == 0)
        assert np.all(b.bn1.gamma.asnumpy() == 1) and np.all(b.bn2.gamma.asnumpy() == 1)
        if b.has_downsample:
            assert np.all(b.downsample[1].gamma.asnumpy() == 1)
    for _, cell in net.cells_and_names():
        if isinstance(cell, nn.BatchNorm2d):
            assert np.all(cell.moving_mean.asnumpy() == 0) and np.all(cell.moving_variance.asnumpy() == 1)


@pytest.mark.slow
def test_initial_loss_is_the_chance_loss(net):
    """Uniform predictions give ln(21) per head: main + 0.4 aux = 1.4 ln 21 = 4.26."""
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((2, 3, 65, 65)).astype(np.float32))
    labels = rng.integers(0, CLASSES, size=(2, 65, 65)).astype(np.int32)
    labels[:, :5] = 255
    net.set_train(True)
    loss = float(PSPLoss(255, 0.4)(net(x), Tensor(labels)).asnumpy())
    chance = 1.4 * math.log(CLASSES)
    assert loss == pytest.approx(chance, rel=0.05), loss
    net.set_train(False)
    main = float(PSPLoss(255, 0.4)(net(x), Tensor(labels)).asnumpy())
    assert main == pytest.approx(math.log(CLASSES), rel=0.05), main
