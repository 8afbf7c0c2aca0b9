"""A small VOC-format data set, generated: what the embedded default and the tests train on.

Layout (the real VOC2012-AUG layout, so the same list-file reader serves both)::

    ROOT/JPEGImages/s000000.jpg            RGB JPEG
    ROOT/SegmentationClassAug/s000000.png  8-bit palette PNG (VOC palette), class ids 0..20, 255 on boundaries
    ROOT/train.txt  ROOT/val.txt           lines "JPEGImages/x.jpg SegmentationClassAug/x.png"
    ROOT/synth.json                        how it was made (images, seed, size)

Each image is a textured, low-saturation background (class 0) with 1-4 shapes (ellipses, polygons,
rotated rectangles) of classes 1-20.  Every class has its own appearance: a hue, a brightness and a
stripe texture (period and orientation), so that a short training run can learn it.  As in VOC, a
thin band of 255 ("ignore") marks every boundary between regions.

Deterministic: image i depends only on (seed, i), and the same seed gives the same bytes.
No MindSpore here (numpy + OpenCV only).
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

PathLike = Union[str, os.PathLike]

CLASSES = 21
IGNORE = 255
IMAGE_DIR = "JPEGImages"
LABEL_DIR = "SegmentationClassAug"
META = "synth.json"
JPEG_QUALITY = 92


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map: ``n`` x 3 uint8 (class 0 black, 1 (128,0,0), ..., 255 (224,224,192))."""
    pal = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


def encode_palette_png(label: np.ndarray, palette: Optional[np.ndarray] = None) -> bytes:
    """Bytes of an 8-bit palette PNG holding ``label`` (H x W uint8) as indices (as VOC stores labels)."""
    if label.dtype != np.uint8 or label.ndim != 2:
        raise ValueError("label must be a 2-D uint8 array")
    pal = voc_palette() if palette is None else np.asarray(palette, np.uint8)
    h, w = label.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = np.concatenate([np.zeros((h, 1), np.uint8), label], axis=1)  # filter type 0 on every row
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 3, 0, 0, 0))
            + chunk(b"PLTE", pal.tobytes())
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), 9))
            + chunk(b"IEND", b""))


# ----------------------------------------------------------------------------------------- appearance
def class_style(k: int) -> Tuple[Tuple[int, int, int], float, int]:
    """Colour (RGB), stripe orientation (radians) and stripe period (pixels) of object class ``k`` (1..20)."""
    hue = int(round((k - 1) * 180 / 20))              # OpenCV hue range 0..179
    val = 235 if k % 2 else 165
    hsv = np.array([[[hue, 230, val]]], np.uint8)
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]
    angle = (k * 37 % 180) * np.pi / 180
    period = 4 + (k * 3) % 7
    return (int(rgb[0]), int(rgb[1]), int(rgb[2])), angle, period


def _stripes(h: int, w: int, angle: float, period: int, phase: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xx * np.cos(angle) + yy * np.sin(angle)
    return np.sin(2 * np.pi * t / period + phase).astype(np.float32)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Low-saturation texture: smooth noise plus a gradient, around a random grey tone."""
    base = rng.uniform(70, 190)
    tint = rng.uniform(-12, 12, size=3)
    coarse = rng.normal(0, 25, size=(max(2, h // 12), max(2, w // 12), 1)).astype(np.float32)
    smooth = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    if smooth.ndim == 2:
        smooth = smooth[:, :, None]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    grad = (rng.uniform(-20, 20) * xx / w + rng.uniform(-20, 20) * yy / h)[:, :, None]
    return base + tint[None, None, :] + smooth + grad


def _shape_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    cx, cy = rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h
    rx, ry = rng.uniform(0.12, 0.3) * w, rng.uniform(0.12, 0.3) * h
    kind = int(rng.integers(3))
    if kind == 0:
        cv2.ellipse(mask, (int(cx), int(cy)), (max(3, int(rx)), max(3, int(ry))),
                    float(rng.uniform(0, 180)), 0, 360, 1, thickness=-1, lineType=cv2.LINE_8)
    elif kind == 1:
        n = int(rng.integers(3, 8))
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=n))
        radii = rng.uniform(0.6, 1.0, size=n)
        pts = np.stack([cx + rx * radii * np.cos(angles), cy + ry * radii * np.sin(angles)], 1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1, lineType=cv2.LINE_8)
    else:
        box = cv2.boxPoints(((cx, cy), (2 * rx, 2 * ry), float(rng.uniform(0, 90))))
        cv2.fillPoly(mask, [np.round(box).astype(np.int32)], 1, lineType=cv2.LINE_8)
    return mask.astype(bool)


def make_sample(seed: int, index: int, size: Tuple[int, int] = (160, 120),
                classes: int = CLASSES) -> Tuple[np.ndarray, np.ndarray]:
    """Image ``index`` of the set made with ``seed``: (RGB uint8 H x W x 3, label uint8 H x W)."""
    w, h = int(size[0]), int(size[1])
    rng = np.random.default_rng([int(seed), int(index)])
    image = _background(rng, h, w)
    label = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 5))):
        k = int(rng.integers(1, classes))
        mask = _shape_mask(rng, h, w)
        if mask.sum() < 30:
            continue
        colour, angle, period = class_style(k)
        tex = _stripes(h, w, angle, period, float(rng.uniform(0, 2 * np.pi)))
        obj = np.asarray(colour, np.float32)[None, None, :] * rng.uniform(0.9, 1.1) + 28 * tex[:, :, None]
        image[mask] = obj[mask]
        label[mask] = k
    image += rng.normal(0, 6, size=image.shape).astype(np.float32)
    # VOC-like "void" band on every region boundary
    kernel = np.ones((3, 3), np.uint8)
    edge = cv2.dilate(label, kernel) != cv2.erode(label, kernel)
    label[edge] = IGNORE
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), label


# --------------------------------------------------------------------------------------- generation
def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def generate(root: PathLike, images: int = 48, seed: int = 0, size: Tuple[int, int] = (160, 120),
             val_fraction: float = 0.25, classes: int = CLASSES, train_list: str = "train.txt",
             val_list: str = "val.txt", log: Optional[Callable[[str], None]] = _log,
             display: Optional[str] = None) -> Dict[str, Any]:
    """Write a VOC-format data set of ``images`` images (train + val) into ``root``; returns its summary.

    The list files are written last, so a directory with both lists is complete.  ``size`` is
    (width, height).  ``log`` gets a short progress line when generation takes more than a second,
    naming ``display`` (default: ``root``).
    """
    if images < 2:
        raise ValueError(f"images must be at least 2 (one train, one val), got {images}")
    if not 2 <= classes <= 255:
        raise ValueError(f"classes must be in 2..255, got {classes}")
    root = Path(root)
    (root / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    (root / LABEL_DIR).mkdir(parents=True, exist_ok=True)
    n_val = min(images - 1, max(1, int(round(images * val_fraction))))
    palette = voc_palette()
    lines = []
    t0, announced = time.monotonic(), False
    for i in range(images):
        image, label = make_sample(seed, i, size, classes)
        name = f"s{i:06d}"
        ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"OpenCV could not encode image {name}")
        (root / IMAGE_DIR / f"{name}.jpg").write_bytes(jpg.tobytes())
        (root / LABEL_DIR / f"{name}.png").write_bytes(encode_palette_png(label, palette))
        lines.append(f"{IMAGE_DIR}/{name}.jpg {LABEL_DIR}/{name}.png\n")
        if log and time.monotonic() - t0 > 1.0 and (not announced or (i + 1) % max(1, images // 5) == 0):
            log(f"synth: generating a data set in {display or root}: {i + 1}/{images} images")
            announced = True
    summary = {"images": images, "train": images - n_val, "val": n_val, "seed": int(seed),
               "size": [int(size[0]), int(size[1])], "classes": classes, "format": "voc2012"}
    (root / META).write_text(json.dumps(summary, indent=1) + "\n")
    (root / train_list).write_text("".join(lines[:images - n_val]))
    (root / val_list).write_text("".join(lines[images - n_val:]))
    if log and announced:
        log(f"synth: done, {images} images in {time.monotonic() - t0:.1f} s")
    return summary


def _complete(root: Path, lists: Sequence[str]) -> bool:
    return all((root / name).is_file() for name in lists)


_NOTED: set = set()


def _note_size_mismatch(root: Path, wanted: int, log: Callable[[str], None]) -> None:
    """Say once per process and root when a cached generated set has another size than asked for."""
    if (str(root), wanted) in _NOTED:
        return
    _NOTED.add((str(root), wanted))
    try:
        made = json.loads((root / META).read_text()).get("images")
    except (OSError, ValueError, AttributeError):
        return   # not a generated set, or an old one: nothing to compare
    if made is not None and int(made) != wanted:
        log(f"synth: {root} already holds a generated set of {made} images; synth_images={wanted} is ignored "
            f"(remove {root} to regenerate)")


def ensure_dataset(cfg: Dict[str, Any], log: Optional[Callable[[str], None]] = _log) -> Path:
    """Return ``cfg["data_root"]``, generating a data set there first when the config asks for it.

    With ``synthesize_if_missing`` and no list files at ``data_root``, the set is built in a temporary
    directory beside it and renamed into place, so that several ranks starting at once are safe:
    the first rename wins and the others use the winner's set.  Without it, nothing is written.
    """
    if not cfg.get("data_root"):
        raise ValueError("config: data_root is empty; set data_root=DIR (a VOC2012-AUG or ADE20K root, "
                         "or any directory with synthesize_if_missing=true)")
    root = Path(os.path.expanduser(str(cfg["data_root"])))
    lists = (cfg.get("train_list", "train.txt"), cfg.get("val_list", "val.txt"))
    if _complete(root, lists) or not cfg.get("synthesize_if_missing"):
        if cfg.get("synthesize_if_missing") and log:
            _note_size_mismatch(root, int(cfg.get("synth_images", 48)), log)
        return root
    if root.exists() and any(root.iterdir()):
        if _complete(root, lists):  # another rank finished it just now
            return root
        raise FileExistsError(
            f"data_root {root} exists and is not empty, but lacks {' and '.join(lists)}: "
            f"remove it, or point data_root at an empty or missing directory to have a data set generated there")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        generate(tmp, images=int(cfg.get("synth_images", 48)), seed=0,
                 classes=min(int(cfg.get("classes", CLASSES)), CLASSES),
                 train_list=lists[0], val_list=lists[1], log=log, display=str(root))
        try:
            os.rename(tmp, root)   # atomic; replaces a missing or empty directory only
        except OSError:
            if not _complete(root, lists):
                raise
            # another rank won the race: use its set
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if not _complete(root, lists):
        raise FileNotFoundError(f"data set generation at {root} did not leave {' and '.join(lists)}")
    return root
