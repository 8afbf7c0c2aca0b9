"""Pyramid pooling: adaptive pooling at sizes not divisible by the bins, in GRAPH_MODE on CPU."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor, nn, ops

from trainer.model.ppm import PPM, AdaptiveAvgPool, bin_bounds


@pytest.fixture(scope="module", autouse=True)
def _graph_mode_cpu():
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")


def adaptive_avg_pool_reference(x: np.ndarray, b: int) -> np.ndarray:
    """PyTorch's AdaptiveAvgPool2d rule written out: cell i spans [floor(i*H/b), ceil((i+1)*H/b))."""
    n, c, h, w = x.shape
    out = np.zeros((n, c, b, b), np.float64)
    for i in range(b):
        for j in range(b):
            hs, he = int(np.floor(i * h / b)), int(np.ceil((i + 1) * h / b))
            ws, we = int(np.floor(j * w / b)), int(np.ceil((j + 1) * w / b))
            out[:, :, i, j] = x[:, :, hs:he, ws:we].mean(axis=(2, 3))
    return out


def test_bin_bounds_cover_the_map_and_overlap_only_when_not_divisible():
    for size in (13, 9, 60, 7, 6, 1):
        for b in (1, 2, 3, 6):
            cells = [bin_bounds(size, b, i) for i in range(b)]
            assert cells[0][0] == 0 and cells[-1][1] == size
            assert all(s < e for s, e in cells)
            assert all(cells[i + 1][0] <= cells[i][1] for i in range(b - 1))


@pytest.mark.parametrize("bins", [1, 2, 3, 6])
def test_adaptive_pool_matches_reference_at_13x14(bins):
    x = np.random.default_rng(bins).standard_normal((2, 3, 13, 14)).astype(np.float32)
    got = AdaptiveAvgPool(bins)(Tensor(x)).asnumpy()
    assert got.shape == (2, 3, bins, bins)
    np.testing.assert_allclose(got, adaptive_avg_pool_reference(x, bins), rtol=1e-5, atol=1e-6)


def test_adaptive_pool_matches_mindspore_native_op():
    x = np.random.default_rng(0).standard_normal((1, 4, 13, 13)).astype(np.float32)
    for b in (3, 6):
        ours = AdaptiveAvgPool(b)(Tensor(x)).asnumpy()
        native = nn.AdaptiveAvgPool2d(b)(Tensor(x)).asnumpy()
        np.testing.assert_allclose(ours, native, rtol=1e-5, atol=1e-6)


def test_adaptive_pool_gradient_is_the_averaging_weights():
    # d(sum of pooled)/dx: each pixel gets 1/|cell| from every cell that contains it
    x = Tensor(np.zeros((1, 1, 7, 7), np.float32))
    grad = ops.GradOperation()(AdaptiveAvgPool(6))(x).asnumpy()[0, 0]
    rows = np.zeros(7)
    for i in range(6):
        s, e = bin_bounds(7, 6, i)
        rows[s:e] += 1.0 / (e - s)
    np.testing.assert_allclose(grad, np.outer(rows, rows), rtol=1e-6)


def test_ppm_concatenates_input_and_upsampled_stages_at_size_not_divisible_by_6():
    ppm = PPM(in_channels=8, reduction=4, bins=(1, 2, 3, 6))
    ppm.set_train(False)
    x = np.random.default_rng(1).standard_normal((2, 8, 13, 13)).astype(np.float32)
    out = ppm(Tensor(x)).asnumpy()
    assert out.shape == (2, 8 + 4 * 4, 13, 13)
    np.testing.assert_array_equal(out[:, :8], x)          # the input passes through unchanged
    assert (out[:, 8:] >= 0).all()                        # ReLU after each stage
    # bin 1: one value per channel, upsampled: constant over the map
    stage1 = out[:, 8:12]
    np.testing.assert_allclose(stage1, np.broadcast_to(stage1[:, :, :1, :1], stage1.shape), rtol=1e-6)
    # align_corners=True: the corner pixels take the corner bins' values exactly
    pooled6 = ppm.stages[3](Tensor(x)).asnumpy()
    np.testing.assert_allclose(out[:, 20:, 0, 0], pooled6[:, :, 0, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[:, 20:, -1, -1], pooled6[:, :, -1, -1], rtol=1e-5, atol=1e-6)
