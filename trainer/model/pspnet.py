"""PSPNet: dilated ResNet-50 backbone + pyramid pooling + segmentation head, with an auxiliary head on
layer3 for training.

    x ─ backbone ─┬─ layer4 (2048) ─ PPM (4096) ─ head: 3x3 conv 512 + BN + ReLU + Dropout2d(0.1) + 1x1 conv
                  └─ layer3 (1024) ─ aux head: 3x3 conv 256 + BN + ReLU + Dropout2d(0.1) + 1x1 conv

Both logits are upsampled bilinearly (align_corners=True) to the input size.  Only the two final 1x1
classifier convs have a bias, which gives the reference's trainable parameter count: 49,081,578 with
the aux head and 21 classes, 46,716,373 without.

``set_train(True)``: ``construct`` returns ``(main, aux)`` when the aux head is on, else ``main``;
``set_train(False)``: ``main`` only.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import mindspore as ms
from mindspore import nn, ops, Parameter, Tensor

from .conv import Conv2d
from .dropout import SeededDropout2d, dropout_seed_for
from .norm import norm_layer
from .ppm import PPM
from .resnet import ResNet50V2


class SegHead(nn.Cell):
    """3x3 conv (no bias) -> BN -> ReLU -> Dropout2d -> 1x1 conv with bias to ``classes``."""

    def __init__(self, cin: int, mid: int, classes: int, dropout: float, salt: int, sync_bn: bool = False,
                 conv_impl: str = "auto"):
        super().__init__()
        self.conv = Conv2d(cin, mid, 3, padding=1, impl=conv_impl)
        self.bn = norm_layer(sync_bn)(mid)
        self.relu = nn.ReLU()
        self.dropout = SeededDropout2d(dropout, salt)
        self.classifier = Conv2d(mid, classes, 1, has_bias=True, impl=conv_impl)

    def construct(self, x, seed):
        x = self.relu(self.bn(self.conv(x)))
        return self.classifier(self.dropout(x, seed))


class PSPNet(nn.Cell):
    """PSPNet-ResNet50 (output stride 8).  ``init_seed`` makes the random initialisation reproducible
    (every rank building the net with the same seed gets the same weights); ``conv_impl`` is how the
    convolutions run (conv.py: ``auto`` = im2col on CPU, native on Ascend/GPU; no effect on parameters)."""

    def __init__(self, classes: int = 21, aux: bool = True, sync_bn: bool = False,
                 bins: Sequence[int] = (1, 2, 3, 6), dropout: float = 0.1, init_seed: int = 0,
                 conv_impl: str = "auto"):
        super().__init__()
        if int(classes) < 2:
            raise ValueError(f"classes must be at least 2, got {classes}")
        self.classes = int(classes)
        self.use_aux = bool(aux)
        self.backbone = ResNet50V2(sync_bn=sync_bn, conv_impl=conv_impl)
        self.ppm = PPM(2048, 512, bins, sync_bn=sync_bn, conv_impl=conv_impl)
        self.head = SegHead(self.ppm.out_channels, 512, self.classes, dropout, 1, sync_bn, conv_impl)
        if self.use_aux:
            self.aux_head = SegHead(1024, 256, self.classes, dropout, 2, sync_bn, conv_impl)
        #: written by the training loop before each step (see dropout.py); not trained
        self.dropout_seed = Parameter(Tensor(0, ms.int32), name="dropout_seed", requires_grad=False)
        init_weights(self, init_seed)

    def set_dropout_seed(self, seed: int, rank: int, global_step: int) -> int:
        """Derive and store this step's dropout seed; returns the value written."""
        value = dropout_seed_for(seed, rank, global_step)
        self.dropout_seed.set_data(Tensor(value, ms.int32))
        return value

    def construct(self, x):
        size = x.shape[2:]
        c3, c4 = self.backbone(x)
        main = self.head(self.ppm(c4), self.dropout_seed)
        main = ops.interpolate(main, size=size, mode="bilinear", align_corners=True)
        if self.training and self.use_aux:
            aux = self.aux_head(c3, self.dropout_seed)
            aux = ops.interpolate(aux, size=size, mode="bilinear", align_corners=True)
            return main, aux
        return main


#: standard deviation of the two classifier convs at initialisation (the mmseg/semseg convention)
CLASSIFIER_STD = 0.01


def init_weights(net: nn.Cell, seed: int = 0) -> None:
    """Kaiming-normal (fan_out, ReLU) convs, BN gamma 1 / beta 0, drawn on the host from ``seed`` alone
    (independent of MindSpore's global RNG), with two exceptions that keep the first steps sane:

    - the classifiers (``head.classifier``, ``aux_head.classifier``) are N(0, 0.01) with zero bias.  Drawn
      like the other convs (std sqrt(2/fan_out) = 0.31 for 21 classes) the first logits have a standard
      deviation near 5: the run starts at a loss of 10-25 instead of the chance value (1.4 ln 21 = 4.26
      with the aux head), the first gradients are huge, and the conv weights in front of every BatchNorm
      grow by orders of magnitude within a few steps.  Training-mode BN hides that (it renormalises each
      batch), but the running statistics lag behind it and the eval-mode loss comes out 1e4-1e6 times
      the training loss;
    - the last BN of each bottleneck starts with gamma 0, so every residual block starts as the identity
      (or its projection) and the residual stream does not grow with depth at step 0.
    """
    from .resnet import Bottleneck
    rng = np.random.default_rng(int(seed))
    # a bare backbone (loaded or initialised on its own) has no heads and so no classifiers
    heads = (getattr(net, name, None) for name in ("head", "aux_head"))
    classifiers = {id(head.classifier) for head in heads if head is not None}
    zero_gamma = {id(cell.bn3) for _, cell in net.cells_and_names() if isinstance(cell, Bottleneck)}
    for _, cell in net.cells_and_names():
        if isinstance(cell, nn.Conv2d):
            shape = tuple(cell.weight.shape)
            if id(cell) in classifiers:
                std = CLASSIFIER_STD
            else:
                std = math.sqrt(2.0 / (shape[0] * int(np.prod(shape[2:]))))
            w = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
            cell.weight.set_data(Tensor(w))
            if cell.has_bias:
                cell.bias.set_data(Tensor(np.zeros(tuple(cell.bias.shape), np.float32)))
        elif isinstance(cell, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            ch = tuple(cell.gamma.shape)
            gamma = np.zeros(ch, np.float32) if id(cell) in zero_gamma else np.ones(ch, np.float32)
            cell.gamma.set_data(Tensor(gamma))
            cell.beta.set_data(Tensor(np.zeros(ch, np.float32)))
            cell.moving_mean.set_data(Tensor(np.zeros(ch, np.float32)))
            cell.moving_variance.set_data(Tensor(np.ones(ch, np.float32)))
