"""The seed's augmentations: label pixels stay aligned with image pixels under every transform.

The images used here encode their label: every pixel of class k has the colour code(k), on blocks
large enough to have an interior.  After a transform, every pixel whose neighbourhood in the output
label is one class k (so that bilinear resampling and the 5x5 blur cannot mix in other colours) must
still have the colour code(k); padded pixels (label 255) must have the mean colour.
"""
import numpy as np
import pytest

from trainer.data import transforms as T

CLASSES = 21
BLOCK = 16


def code(k):
    k = np.asarray(k, np.float32)
    return np.stack([20 + 10 * k, 230 - 10 * k, 20 + (k * 37) % 200], -1)


def encoded(seed, h=96, w=128, block=BLOCK):
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, CLASSES, size=(h // block + 1, w // block + 1))
    label = np.kron(blocks, np.ones((block, block), np.int64))[:h, :w].astype(np.uint8)
    return code(label).astype(np.float32), label


def interior(label, radius=3):
    """Pixels whose (2r+1)^2 neighbourhood in ``label`` is all one value."""
    h, w = label.shape
    pad = np.pad(label.astype(np.int32), radius, constant_values=-1)
    same = np.ones((h, w), bool)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            same &= pad[dy:dy + h, dx:dx + w] == label
    return same


def assert_aligned(image, label, min_fraction=0.05, radius=3):
    inside = interior(label, radius)
    obj = inside & (label != 255)
    assert obj.mean() > min_fraction, "too few interior pixels: the check would be vacuous"
    err = np.abs(image[obj] - code(label[obj])).max()
    assert err < 1.5, f"image and label misaligned (max colour error {err:.1f})"
    pad = inside & (label == 255)
    if pad.any():
        assert np.abs(image[pad] - np.asarray(T.MEAN, np.float32)).max() < 1.5


def test_encoded_image_check_catches_misalignment():
    image, label = encoded(0)
    assert_aligned(image, label)
    with pytest.raises(AssertionError, match="misaligned"):
        assert_aligned(image, np.ascontiguousarray(label[:, ::-1]))      # label flipped, image not
    with pytest.raises(AssertionError, match="misaligned"):
        assert_aligned(image, np.roll(label, 5, axis=0))                  # off by 5 rows


@pytest.mark.parametrize("seed", range(6))
def test_each_transform_keeps_alignment(seed):
    rng = np.random.default_rng(seed)
    image, label = encoded(seed)
    assert_aligned(*T.random_scale(image, label, rng, (0.5, 2.0)), min_fraction=0.01)
    assert_aligned(*T.random_rotate(image, label, rng, (-10, 10), p=1.0))
    assert_aligned(T.random_gaussian_blur(image, rng, p=1.0), label)
    assert_aligned(*T.random_hflip(image, label, rng, p=1.0))
    assert_aligned(*T.random_crop(image, label, rng, 97))
    assert_aligned(*T.random_crop(image, label, rng, 150))                # padded on both axes
    assert_aligned(*T.center_crop(image, label, 97))
    assert_aligned(*T.center_crop(image, label, 150))


@pytest.mark.parametrize("seed", range(12))
def test_full_training_pipeline_keeps_alignment(seed):
    image, label = encoded(100 + seed, h=150, w=200, block=28)
    # scale + rotate + flip + crop: resampling reaches at most ~2 pixels, so radius 3 is strict
    no_blur = T.TrainTransform(97, p_rotate=1.0, p_blur=0.0, p_flip=1.0)
    out_img, out_lbl = no_blur.augment(image, label, np.random.default_rng(seed))
    assert out_img.shape == (97, 97, 3) and out_lbl.shape == (97, 97)
    assert_aligned(out_img, out_lbl, min_fraction=0.01)
    # the 5x5 blur (p=1) reaches 2 more pixels
    forced = T.TrainTransform(97, p_rotate=1.0, p_blur=1.0, p_flip=1.0)
    assert_aligned(*forced.augment(image, label, np.random.default_rng(seed)), min_fraction=0.01, radius=5)
    assert_aligned(*T.TrainTransform(97).augment(image, label, np.random.default_rng(seed)),
                   min_fraction=0.01, radius=5)


def test_labels_use_nearest_interpolation_only():
    image, label = encoded(7)
    values = set(np.unique(label).tolist()) | {255}
    tf = T.TrainTransform(97, p_rotate=1.0, p_blur=1.0, p_flip=1.0)
    for seed in range(10):
        _, out = tf.augment(image, label, np.random.default_rng(seed))
        assert set(np.unique(out).tolist()) <= values


def test_rotation_fills_image_with_mean_and_label_with_ignore():
    image = np.full((60, 80, 3), 200, np.float32)
    label = np.full((60, 80), 3, np.uint8)
    rng = np.random.default_rng(0)
    out_img, out_lbl = T.random_rotate(image, label, rng, (10, 10), p=1.0)  # exactly 10 degrees
    corner = (slice(0, 2), slice(0, 2))
    assert (out_lbl[corner] == 255).all()
    assert np.allclose(out_img[corner], T.MEAN)
    assert (out_lbl[30, 40] == 3) and np.allclose(out_img[30, 40], 200)


def test_probabilities_zero_and_one():
    image, label = encoded(3)
    rng = np.random.default_rng(0)
    assert T.random_hflip(image, label, rng, p=0.0)[1] is label
    flipped = T.random_hflip(image, label, rng, p=1.0)
    assert np.array_equal(flipped[1], label[:, ::-1]) and np.array_equal(flipped[0], image[:, ::-1])
    assert T.random_rotate(image, label, rng, p=0.0)[0] is image
    assert T.random_gaussian_blur(image, rng, p=0.0) is image
    assert not np.array_equal(T.random_gaussian_blur(image, rng, p=1.0), image)


def test_scale_range_and_crop_padding():
    image, label = encoded(1, h=40, w=50)
    rng = np.random.default_rng(0)
    sizes = [T.random_scale(image, label, rng, (0.5, 2.0))[1].shape for _ in range(200)]
    hs = np.array([s[0] for s in sizes])
    assert hs.min() >= 20 and hs.max() <= 80 and hs.min() < 26 and hs.max() > 74
    img, lbl = T.random_crop(image, label, rng, 64)                     # 40x50 padded to 64x64
    assert img.shape == (64, 64, 3) and lbl.shape == (64, 64)
    assert (lbl == 255).sum() == 64 * 64 - 40 * 50
    img, lbl = T.center_crop(image, label, 32)
    assert np.array_equal(lbl, label[4:36, 9:41])


def test_normalize_and_output_types():
    image, label = encoded(2)
    x, y = T.TrainTransform(97)(image.astype(np.uint8), label, np.random.default_rng(0))
    assert x.shape == (3, 97, 97) and x.dtype == np.float32 and x.flags.c_contiguous
    assert y.shape == (97, 97) and y.dtype == np.int32
    mean_px = np.broadcast_to(np.asarray(T.MEAN, np.float32), (2, 2, 3))
    assert np.allclose(T.normalize(mean_px), 0, atol=1e-6)
    one = T.normalize(np.asarray(T.MEAN, np.float32) + np.asarray(T.STD, np.float32) * np.ones((1, 1, 3)))
    assert np.allclose(one, 1, atol=1e-5)
    v, w = T.ValTransform(97)(image.astype(np.uint8), label)
    assert v.shape == (3, 97, 97) and w.dtype == np.int32


def test_same_generator_seed_same_output():
    image, label = encoded(4)
    tf = T.TrainTransform(97)
    a = tf(image, label, np.random.default_rng([1, 2, 3]))
    b = tf(image, label, np.random.default_rng([1, 2, 3]))
    c = tf(image, label, np.random.default_rng([1, 2, 4]))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_from_config():
    tr, va = T.from_config({"crop_size": 65, "scale_min": 1.0, "scale_max": 1.0, "rotate_min": 0,
                            "rotate_max": 0, "ignore_label": 255})
    assert tr.crop == 65 and tr.scale == (1.0, 1.0) and va.crop == 65
