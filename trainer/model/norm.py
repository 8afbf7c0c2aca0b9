"""Which BatchNorm the model uses.

Cross-device (synchronised) BatchNorm only makes sense when there is more than one device and the
backend implements it (Ascend, GPU).  On CPU, and for a single device, plain BatchNorm2d is both
correct and cheaper.  Both cells own the same four parameters (gamma, beta, moving_mean,
moving_variance), so a checkpoint made with one loads into the other.
"""
from __future__ import annotations

from typing import Callable

from mindspore import nn

#: MindSpore's momentum is the weight of the running statistic (PyTorch's 0.1 is 0.9 here).
BN_MOMENTUM = 0.9
BN_EPS = 1e-5

SYNC_BN_BACKENDS = frozenset({"ascend", "gpu"})


def use_sync_bn(world_size: int, backend: str) -> bool:
    """True when SyncBatchNorm should be used: more than one device on a backend that supports it."""
    return int(world_size) > 1 and str(backend).lower() in SYNC_BN_BACKENDS


def norm_layer(sync_bn: bool = False) -> Callable[[int], nn.Cell]:
    """A factory ``make(channels) -> BatchNorm cell``: SyncBatchNorm when ``sync_bn``, else BatchNorm2d."""
    if sync_bn:
        return lambda ch: nn.SyncBatchNorm(ch, eps=BN_EPS, momentum=BN_MOMENTUM)
    return lambda ch: nn.BatchNorm2d(ch, eps=BN_EPS, momentum=BN_MOMENTUM)
