"""ResNet-50 "v2" (deep stem, dilated) backbone for PSPNet, output stride 8.

Layout and parameter names follow the PSPNet reference (hszhao/semseg, and the MindSpore model zoo's
``resnet50(deep_base=True)``), so an ImageNet checkpoint of that network loads by name:

- stem: ``conv1`` 3x3 3->64 stride 2, ``conv2`` 3x3 64->64, ``conv3`` 3x3 64->128, each followed by
  ``bn1``/``bn2``/``bn3`` + ReLU, then a 3x3 max-pool with stride 2 (output stride 4);
- ``layer1``..``layer4`` of Bottleneck blocks (3, 4, 6, 3), the stride on the 3x3 conv (``conv2``),
  ``downsample.0``/``downsample.1`` the 1x1 projection and its BN;
- ``layer3`` uses dilation 2 and ``layer4`` dilation 4, both with stride 1, so the output stride is 8.

No conv in the backbone has a bias (BN follows each one).  ``conv_impl`` picks how convolutions run
(see conv.py: ``auto`` is im2col on CPU, native elsewhere); it changes no parameter.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

from mindspore import nn

from .conv import Conv2d
from .norm import norm_layer


def conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1, impl: str = "auto") -> Conv2d:
    return Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, impl=impl)


def conv1x1(cin: int, cout: int, stride: int = 1, impl: str = "auto") -> Conv2d:
    return Conv2d(cin, cout, 1, stride=stride, impl=impl)


class Bottleneck(nn.Cell):
    """1x1 reduce -> 3x3 (stride, dilation) -> 1x1 expand (x4), plus the identity or a projection."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: Optional[nn.Cell] = None, norm: Callable[[int], nn.Cell] = norm_layer(),
                 impl: str = "auto"):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes, impl=impl)
        self.bn1 = norm(planes)
        self.conv2 = conv3x3(planes, planes, stride, dilation, impl=impl)
        self.bn2 = norm(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion, impl=impl)
        self.bn3 = norm(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample
        self.has_downsample = downsample is not None

    def construct(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.has_downsample:
            identity = self.downsample(x)
        return self.relu(out + identity)


class ResNet50V2(nn.Cell):
    """Deep-stem dilated ResNet-50; ``construct(x) -> (layer3, layer4)`` with 1024 and 2048 channels."""

    layers = (3, 4, 6, 3)

    def __init__(self, sync_bn: bool = False, conv_impl: str = "auto"):
        super().__init__()
        norm = norm_layer(sync_bn)
        self._impl = conv_impl
        self.conv1 = conv3x3(3, 64, stride=2, impl=conv_impl)
        self.bn1 = norm(64)
        self.conv2 = conv3x3(64, 64, impl=conv_impl)
        self.bn2 = norm(64)
        self.conv3 = conv3x3(64, 128, impl=conv_impl)
        self.bn3 = norm(128)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="pad", padding=1)
        self._inplanes = 128
        self.layer1 = self._make_layer(64, self.layers[0], 1, 1, norm)
        self.layer2 = self._make_layer(128, self.layers[1], 2, 1, norm)
        self.layer3 = self._make_layer(256, self.layers[2], 1, 2, norm)
        self.layer4 = self._make_layer(512, self.layers[3], 1, 4, norm)

    def _make_layer(self, planes: int, blocks: int, stride: int, dilation: int,
                    norm: Callable[[int], nn.Cell]) -> nn.SequentialCell:
        downsample = None
        if stride != 1 or self._inplanes != planes * Bottleneck.expansion:
            downsample = nn.SequentialCell([conv1x1(self._inplanes, planes * Bottleneck.expansion, stride,
                                                    impl=self._impl),
                                            norm(planes * Bottleneck.expansion)])
        cells = [Bottleneck(self._inplanes, planes, stride, dilation, downsample, norm, self._impl)]
        self._inplanes = planes * Bottleneck.expansion
        for _ in range(1, blocks):
            cells.append(Bottleneck(self._inplanes, planes, 1, dilation, None, norm, self._impl))
        return nn.SequentialCell(cells)

    def construct(self, x) -> Tuple:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.relu(self.bn3(self.conv3(x)))
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        c3 = self.layer3(x)
        c4 = self.layer4(c3)
        return c3, c4
