"""Pyramid pooling module (PSPNet): pool the 2048-channel map to 1x1, 2x2, 3x3 and 6x6 bins, reduce each
to 512 channels (1x1 conv, no bias, + BN + ReLU), upsample back (bilinear, align_corners=True) and
concatenate with the input: 2048 + 4 * 512 = 4096 channels.
"""
from __future__ import annotations

from typing import Callable, Sequence

from mindspore import nn, ops

from .conv import Conv2d
from .norm import norm_layer


def bin_bounds(size: int, bins: int, i: int):
    """Cell ``i`` of ``bins`` adaptive cells over ``size``: [floor(i*size/bins), ceil((i+1)*size/bins)).

    The same rule as PyTorch's AdaptiveAvgPool2d: cells may overlap when ``size`` is not divisible.
    """
    return (i * size) // bins, ((i + 1) * size + bins - 1) // bins


class AdaptiveAvgPool(nn.Cell):
    """Adaptive average pooling to ``bins x bins`` built from static slices and means.

    Works in GRAPH_MODE on every backend at any input size (divisible by ``bins`` or not): the slice
    bounds are Python integers computed from the static input shape when the graph is compiled.
    Pools rows first, then columns, so it costs 2 * bins slices.
    """

    def __init__(self, bins: int):
        super().__init__()
        self.bins = int(bins)

    def construct(self, x):
        b = self.bins
        if b == 1:
            return ops.mean(x, (2, 3), True)
        h = x.shape[2]
        w = x.shape[3]
        rows = []
        for i in range(b):
            hs, he = bin_bounds(h, b, i)
            rows.append(ops.mean(x[:, :, hs:he, :], 2, True))
        x = ops.concat(rows, 2)
        cols = []
        for j in range(b):
            ws, we = bin_bounds(w, b, j)
            cols.append(ops.mean(x[:, :, :, ws:we], 3, True))
        return ops.concat(cols, 3)


class PPMStage(nn.Cell):
    """One pyramid level: adaptive pool to ``bins`` -> 1x1 conv (no bias) -> BN -> ReLU."""

    def __init__(self, cin: int, cout: int, bins: int, norm: Callable[[int], nn.Cell], conv_impl: str = "auto"):
        super().__init__()
        self.pool = AdaptiveAvgPool(bins)
        self.conv = Conv2d(cin, cout, 1, impl=conv_impl)
        self.bn = norm(cout)
        self.relu = nn.ReLU()

    def construct(self, x):
        return self.relu(self.bn(self.conv(self.pool(x))))


class PPM(nn.Cell):
    """``construct(x) -> concat([x] + [upsample(stage(x)) for each bin])``."""

    def __init__(self, in_channels: int = 2048, reduction: int = 512, bins: Sequence[int] = (1, 2, 3, 6),
                 sync_bn: bool = False, conv_impl: str = "auto"):
        super().__init__()
        norm = norm_layer(sync_bn)
        self.bins = tuple(int(b) for b in bins)
        self.stages = nn.CellList([PPMStage(in_channels, reduction, b, norm, conv_impl) for b in self.bins])
        self.out_channels = in_channels + reduction * len(self.bins)

    def construct(self, x):
        size = x.shape[2:]
        outs = [x]
        for stage in self.stages:
            outs.append(ops.interpolate(stage(x), size=size, mode="bilinear", align_corners=True))
        return ops.concat(outs, 1)
