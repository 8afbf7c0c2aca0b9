"""Conv2d that runs fast on MindSpore's CPU backend.

On CPU, MindSpore 2.10 hands its convolutions to oneDNN in plain NCHW layout; oneDNN then runs every
kernel larger than 1x1 (and strided 1x1) with its reference implementation, 30-100x slower than its
matrix-multiply path (ONEDNN_VERBOSE=1 shows ``jit_uni_ncsp:conv+ref:any``; a 3x3 conv 4096->512 on a
2x4096x13x13 input takes ~14 s of CPU, the same FLOPs as a matmul take ~0.2 s).  1x1 stride-1
convolutions do get the fast path (``brg_matmul``).  So on CPU a KxK convolution is computed as im2col:
the K*K shifted (strided, dilated) views of the padded input are stacked along the channels and one
1x1 convolution with the weight reshaped to (out, in*K*K, 1, 1) does the rest.  Same parameters, same
names, same numbers (up to float rounding); the backward is the autodiff of slices, a stack and a 1x1
conv, which is fast too.  On Ascend/GPU the native convolution is used.
"""
from __future__ import annotations

import os

from mindspore import nn, ops

IMPLS = ("auto", "native", "im2col")
IMPL_ENV = "PSPNET_CONV_IMPL"     # overrides "auto" (e.g. to compare the two paths in one job)


def _isa_capped() -> bool:
    """True when oneDNN is capped below AVX-512 (ONEDNN_MAX_CPU_ISA=AVX2 ..., as trainer/world.py sets on
    CPU before MindSpore loads): its NCHW KxK convs are then fast and the native conv wins."""
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    return bool(isa) and not isa.startswith(("AVX512", "AVX10", "ALL", "DEFAULT"))


def resolve_impl(impl: str = "auto") -> str:
    """``auto``: im2col when MindSpore's device target is CPU and oneDNN is not capped below AVX-512,
    native otherwise."""
    if impl not in IMPLS:
        raise ValueError(f"conv implementation must be one of {', '.join(IMPLS)}, got {impl!r}")
    if impl == "auto":
        impl = os.environ.get(IMPL_ENV, "").strip().lower() or "auto"
        if impl not in IMPLS:
            raise ValueError(f"{IMPL_ENV}={impl!r}: use one of {', '.join(IMPLS)}")
    if impl != "auto":
        return impl
    import mindspore as ms
    try:
        target = str(ms.get_context("device_target"))
    except Exception:  # pragma: no cover - context not readable: the safe, portable choice
        target = "CPU"
    return "im2col" if target.upper() == "CPU" and not _isa_capped() else "native"


def zero_pad(x, p: int):
    """``x`` (N, C, H, W) with ``p`` rows/columns of zeros on every side, built as zeros + concat.

    Not ``ops.pad``: in a GRAPH_MODE training graph holding two or more ``ops.pad`` calls, MindSpore 2.10's
    CPU pad kernel (PadV3) spins forever after a few steps (benchmarks/repro_pad_stall.py reproduces it
    without this project's code); zeros + concat runs every step and costs the same.
    """
    n, c, h, w = x.shape
    rows = ops.zeros((n, c, p, w), x.dtype)
    x = ops.concat((rows, x, rows), 2)
    cols = ops.zeros((n, c, h + 2 * p, p), x.dtype)
    return ops.concat((cols, x, cols), 3)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (square kernel, symmetric zero padding) with an im2col path for CPU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, dilation: int = 1, has_bias: bool = False, impl: str = "auto"):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         pad_mode="pad" if padding else "valid", padding=padding, dilation=dilation,
                         has_bias=has_bias, weight_init="zeros", bias_init="zeros" if has_bias else None)
        self.k = int(kernel_size)
        self.s = int(stride)
        self.p = int(padding)
        self.d = int(dilation)
        self.use_bias = bool(has_bias)
        self.im2col = resolve_impl(impl) == "im2col" and not (self.k == 1 and self.s == 1 and self.p == 0)

    def construct(self, x):
        if self.im2col:
            out = self._im2col_conv(x)
        else:
            out = ops.conv2d(x, self.weight, stride=self.s, pad_mode="pad" if self.p else "valid",
                             padding=self.p, dilation=self.d)
        if self.use_bias:
            out = ops.bias_add(out, self.bias)
        return out

    def _im2col_conv(self, x):
        k, s, d, p = self.k, self.s, self.d, self.p
        n = x.shape[0]
        c = x.shape[1]
        ho = (x.shape[2] + 2 * p - d * (k - 1) - 1) // s + 1
        wo = (x.shape[3] + 2 * p - d * (k - 1) - 1) // s + 1
        if p > 0:
            x = zero_pad(x, p)
        if k == 1:
            return ops.conv2d(x[:, :, 0:(ho - 1) * s + 1:s, 0:(wo - 1) * s + 1:s], self.weight)
        taps = []
        for i in range(k):
            for j in range(k):
                taps.append(x[:, :, i * d:i * d + (ho - 1) * s + 1:s, j * d:j * d + (wo - 1) * s + 1:s])
        # (n, c, k*k, ho, wo) -> (n, c*k*k, ho, wo): channel-major, like the weight's (out, c, k, k)
        cols = ops.stack(taps, 2).reshape(n, c * k * k, ho, wo)
        return ops.conv2d(cols, self.weight.reshape(self.weight.shape[0], c * k * k, 1, 1))
