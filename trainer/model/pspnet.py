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


def init_weights(net: nn.Cell, seed: int = 0) -> None:
    """Kaiming-normal (fan_out, ReLU) convs, zero biases, BN gamma 1 / beta 0, from a NumPy generator.

    Drawn on the host from ``seed`` alone, so the result does not depend on MindSpore's global RNG.
    """
    rng = np.random.default_rng(int(seed))
    for name, cell in net.cells_and_names():
        if isinstance(cell, nn.Conv2d):
            shape = tuple(cell.weight.shape)
            fan_out = shape[0] * int(np.prod(shape[2:]))
            std = math.sqrt(2.0 / fan_out)
            w = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
            cell.weight.set_data(Tensor(w))
            if cell.has_bias:
                cell.bias.set_data(Tensor(np.zeros(tuple(cell.bias.shape), np.float32)))
        elif isinstance(cell, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            ch = tuple(cell.gamma.shape)
            cell.gamma.set_data(Tensor(np.ones(ch, np.float32)))
            cell.beta.set_data(Tensor(np.zeros(ch, np.float32)))
            cell.moving_mean.set_data(Tensor(np.zeros(ch, np.float32)))
            cell.moving_variance.set_data(Tensor(np.ones(ch, np.float32)))
