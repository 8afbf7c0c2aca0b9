"""The seed's augmentations with numpy + OpenCV, one function per idea.

Training (in this order, as the seed does): random scale 0.5-2.0, random rotate -10..10 degrees
(p=0.5; image filled with the mean, label with 255), Gaussian blur 5x5 (p=0.5), horizontal flip
(p=0.5), random crop to ``crop`` x ``crop`` (padding with the mean / 255 first when smaller), then
normalisation with the ImageNet mean/std on the 0-255 scale and HWC -> CHW float32.
Validation: centre crop (padding when smaller), normalisation.

Images are RGB and handled as float32 (so padding is the exact mean, as in the seed); labels are
uint8 and always resampled with nearest-neighbour interpolation, so a label never gets a value it
did not have (apart from 255 where it is padded).  Every random choice comes from the
``numpy.random.Generator`` passed in: no global RNG, so a sample's augmentation is a function of
its seed alone.  No MindSpore here.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import cv2
import numpy as np

#: ImageNet statistics on the 0-255 scale, RGB order.
MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
IGNORE = 255

Pair = Tuple[np.ndarray, np.ndarray]


def random_scale(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                 scale: Tuple[float, float] = (0.5, 2.0)) -> Pair:
    """Resize both by one factor drawn uniformly from ``scale``: image bilinear, label nearest."""
    s = float(rng.uniform(scale[0], scale[1]))
    h, w = label.shape
    size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
    return (cv2.resize(image, size, interpolation=cv2.INTER_LINEAR),
            cv2.resize(label, size, interpolation=cv2.INTER_NEAREST))


def random_rotate(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                  angle: Tuple[float, float] = (-10.0, 10.0), fill: Sequence[float] = MEAN,
                  ignore: int = IGNORE, p: float = 0.5) -> Pair:
    """With probability ``p``, rotate both about the centre; uncovered pixels get ``fill`` / ``ignore``."""
    if rng.random() >= p:
        return image, label
    a = float(rng.uniform(angle[0], angle[1]))
    h, w = label.shape
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), a, 1.0)
    image = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=tuple(float(v) for v in fill))
    label = cv2.warpAffine(label, m, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=int(ignore))
    return image, label


def random_gaussian_blur(image: np.ndarray, rng: np.random.Generator, p: float = 0.5,
                         ksize: int = 5) -> np.ndarray:
    """With probability ``p``, Gaussian blur ``ksize`` x ``ksize`` (sigma from the kernel size)."""
    if rng.random() >= p:
        return image
    return cv2.GaussianBlur(image, (ksize, ksize), 0)


def random_hflip(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> Pair:
    """With probability ``p``, mirror both left-right (as views: the crop that follows copies less)."""
    if rng.random() >= p:
        return image, label
    return image[:, ::-1], label[:, ::-1]


def pad_to(image: np.ndarray, label: np.ndarray, size: int, fill: Sequence[float] = MEAN,
           ignore: int = IGNORE) -> Pair:
    """Pad both (evenly on each side) to at least ``size`` x ``size`` with ``fill`` / ``ignore``."""
    h, w = label.shape
    ph, pw = max(size - h, 0), max(size - w, 0)
    if ph == 0 and pw == 0:
        return image, label
    top, left = ph // 2, pw // 2
    border = (top, ph - top, left, pw - left)
    image, label = np.ascontiguousarray(image), np.ascontiguousarray(label)   # OpenCV wants plain arrays
    image = cv2.copyMakeBorder(image, *border, cv2.BORDER_CONSTANT, value=tuple(float(v) for v in fill))
    label = cv2.copyMakeBorder(label, *border, cv2.BORDER_CONSTANT, value=int(ignore))
    return image, label


def random_crop(image: np.ndarray, label: np.ndarray, rng: np.random.Generator, size: int,
                fill: Sequence[float] = MEAN, ignore: int = IGNORE) -> Pair:
    """Pad to ``size`` if smaller, then cut a ``size`` x ``size`` window at a random place."""
    image, label = pad_to(image, label, size, fill, ignore)
    h, w = label.shape
    y = int(rng.integers(0, h - size + 1))
    x = int(rng.integers(0, w - size + 1))
    return image[y:y + size, x:x + size], label[y:y + size, x:x + size]


def center_crop(image: np.ndarray, label: np.ndarray, size: int, fill: Sequence[float] = MEAN,
                ignore: int = IGNORE) -> Pair:
    """Pad to ``size`` if smaller, then cut the central ``size`` x ``size`` window."""
    image, label = pad_to(image, label, size, fill, ignore)
    h, w = label.shape
    y, x = (h - size) // 2, (w - size) // 2
    return image[y:y + size, x:x + size], label[y:y + size, x:x + size]


def normalize(image: np.ndarray, mean: Sequence[float] = MEAN, std: Sequence[float] = STD) -> np.ndarray:
    """(HWC - mean) / std, as CHW float32."""
    out = (image.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


class TrainTransform:
    """The seed's training pipeline; ``augment`` stops before normalisation (for inspection and tests)."""

    def __init__(self, crop: int, scale: Tuple[float, float] = (0.5, 2.0),
                 rotate: Tuple[float, float] = (-10.0, 10.0), ignore: int = IGNORE,
                 mean: Sequence[float] = MEAN, std: Sequence[float] = STD,
                 p_rotate: float = 0.5, p_blur: float = 0.5, p_flip: float = 0.5) -> None:
        self.crop, self.scale, self.rotate, self.ignore = int(crop), tuple(scale), tuple(rotate), int(ignore)
        self.mean, self.std = tuple(mean), tuple(std)
        self.p_rotate, self.p_blur, self.p_flip = p_rotate, p_blur, p_flip

    def augment(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> Pair:
        """(float32 crop x crop x 3 image on 0-255, uint8 crop x crop label)."""
        image = image.astype(np.float32)
        image, label = random_scale(image, label, rng, self.scale)
        image, label = random_rotate(image, label, rng, self.rotate, self.mean, self.ignore, self.p_rotate)
        image = random_gaussian_blur(image, rng, self.p_blur)
        image, label = random_hflip(image, label, rng, self.p_flip)
        return random_crop(image, label, rng, self.crop, self.mean, self.ignore)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> Pair:
        """(float32 3 x crop x crop normalised image, int32 crop x crop label)."""
        image, label = self.augment(image, label, rng)
        return normalize(image, self.mean, self.std), label.astype(np.int32)


class ValTransform:
    """Validation: centre crop (padding when smaller), normalisation."""

    def __init__(self, crop: int, ignore: int = IGNORE, mean: Sequence[float] = MEAN,
                 std: Sequence[float] = STD) -> None:
        self.crop, self.ignore, self.mean, self.std = int(crop), int(ignore), tuple(mean), tuple(std)

    def augment(self, image: np.ndarray, label: np.ndarray) -> Pair:
        return center_crop(image.astype(np.float32), label, self.crop, self.mean, self.ignore)

    def __call__(self, image: np.ndarray, label: np.ndarray) -> Pair:
        image, label = self.augment(image, label)
        return normalize(image, self.mean, self.std), label.astype(np.int32)


def from_config(cfg: dict) -> Tuple[TrainTransform, ValTransform]:
    """The train and val transforms of a config (crop_size, scale_min/max, rotate_min/max, ignore_label)."""
    ignore = int(cfg.get("ignore_label", IGNORE))
    train = TrainTransform(int(cfg["crop_size"]), (float(cfg["scale_min"]), float(cfg["scale_max"])),
                           (float(cfg["rotate_min"]), float(cfg["rotate_max"])), ignore)
    return train, ValTransform(int(cfg["crop_size"]), ignore)
