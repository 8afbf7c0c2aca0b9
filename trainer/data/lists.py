"""List-file data sets in their real layouts, with errors that name the list file and line.

- ``voc2012`` (VOC2012-AUG / SBD): lines ``JPEGImages/x.jpg SegmentationClassAug/x.png`` relative to
  ``data_root``; a line holding only a name ``x`` (the ImageSets/Segmentation style) means the same pair.
  Labels are class ids 0..classes-1 and 255 (ignore), stored as palette or greyscale PNGs.
- ``ade20k``: lines ``images/training/x.jpg annotations/training/x.png``; labels shifted as in the seed:
  0 ("other") becomes 255 (ignore) and k becomes k-1.

Blank lines and lines starting with ``#`` are skipped.  Problems found when a list is read (malformed
line, missing file) or when a sample is loaded (unreadable image or label, label size different from
the image, class id >= classes and != 255) raise :class:`DataError` with ``LIST:LINE: what, what to do``.
:func:`check_list` runs every check on every line and returns all problems instead of raising.

No MindSpore here.  Images are read with OpenCV; labels with Pillow (it comes with matplotlib), which
keeps palette indices as they are (OpenCV would expand a palette PNG to colours).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

PathLike = Union[str, os.PathLike]
LAYOUTS = ("voc2012", "ade20k")
IGNORE = 255
MAX_LISTED = 20


class DataError(ValueError):
    """Bad data, worded for the user: which list file, which line, what is wrong, what to do."""


@dataclass(frozen=True)
class Sample:
    """One line of a list file: image and label paths, and where the line is (``LIST:LINE``)."""
    image: str
    label: str
    where: str


def _resolve(root: Path, rel: str) -> str:
    return str(root / rel) if not os.path.isabs(rel) else rel


def parse_list(list_path: PathLike, data_root: PathLike, dataset: str = "voc2012",
               check_files: bool = True) -> Tuple[List[Sample], List[str]]:
    """Samples of a list file and the problems found (malformed lines, missing files), in line order."""
    if dataset not in LAYOUTS:
        raise DataError(f"dataset {dataset!r} is not one of {', '.join(LAYOUTS)}")
    list_path, root = Path(list_path), Path(data_root)
    try:
        text = list_path.read_text()
    except FileNotFoundError:
        raise DataError(f"{list_path}: list file not found (check data_root and train_list/val_list in "
                        f"the config)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{list_path}: cannot read list file: {exc}") from None
    samples: List[Sample] = []
    problems: List[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{list_path}:{number}"
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) == 1 and dataset == "voc2012" and "/" not in fields[0]:
            fields = [f"JPEGImages/{fields[0]}.jpg", f"SegmentationClassAug/{fields[0]}.png"]
        if len(fields) != 2:
            example = ("JPEGImages/x.jpg SegmentationClassAug/x.png" if dataset == "voc2012"
                       else "images/training/x.jpg annotations/training/x.png")
            problems.append(f"{where}: malformed line {line.strip()[:80]!r}: expected two paths "
                            f"'IMAGE LABEL' relative to data_root, e.g. '{example}'")
            continue
        sample = Sample(_resolve(root, fields[0]), _resolve(root, fields[1]), where)
        if check_files:
            missing = [p for p in (sample.image, sample.label) if not os.path.isfile(p)]
            if missing:
                problems.append(f"{where}: missing file {', '.join(missing)} (data_root is {root})")
                continue
        samples.append(sample)
    return samples, problems


def read_list(list_path: PathLike, data_root: PathLike, dataset: str = "voc2012",
              check_files: bool = True) -> List[Sample]:
    """Samples of a list file; raises :class:`DataError` listing its malformed lines and missing files."""
    samples, problems = parse_list(list_path, data_root, dataset, check_files)
    if problems:
        raise DataError(_summarise(problems))
    if not samples:
        raise DataError(f"{list_path}: the list is empty (no 'IMAGE LABEL' lines)")
    return samples


def _summarise(problems: Sequence[str]) -> str:
    head = list(problems[:MAX_LISTED])
    more = len(problems) - len(head)
    tail = [f"... and {more} more (run `pspnet-cluster data check --config ...` for all)"] if more else []
    return "\n".join(head + tail)


def read_image(path: str, where: str) -> np.ndarray:
    """RGB uint8 H x W x 3."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"{where}: unreadable image {path} (not a valid JPEG/PNG, or truncated)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_label(path: str, where: str) -> np.ndarray:
    """Class-id map uint8 H x W from a palette or greyscale PNG (palette indices are the class ids)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("P", "L"):
                arr = np.array(img, dtype=np.uint8)
            elif mode in ("I", "I;16", "I;16B", "I;16L"):
                arr = np.array(img).astype(np.int64)
                if arr.min() < 0 or arr.max() > 255:
                    raise DataError(f"{where}: label {path} has values outside 0..255 "
                                    f"(min {arr.min()}, max {arr.max()})")
                arr = arr.astype(np.uint8)
            else:
                raise DataError(f"{where}: label {path} is a {mode} image; expected class ids in a "
                                f"palette or greyscale PNG (convert colour masks to ids first)")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{where}: unreadable label {path}: {exc}") from None
    return arr


def shift_ade20k(label: np.ndarray) -> np.ndarray:
    """ADE20K ids: 0 ('other') -> 255 (ignore), k -> k-1."""
    return (label.astype(np.int16) - 1).astype(np.uint8)  # 0 - 1 wraps to 255


def load_sample(sample: Sample, classes: int, dataset: str = "voc2012",
                ignore: int = IGNORE) -> Tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 H x W x 3, label uint8 H x W) of one sample, checked; raises :class:`DataError`."""
    image = read_image(sample.image, sample.where)
    label = read_label(sample.label, sample.where)
    if dataset == "ade20k":
        label = shift_ade20k(label)
    if label.shape != image.shape[:2]:
        raise DataError(f"{sample.where}: label {sample.label} is {label.shape[1]}x{label.shape[0]} but image "
                        f"{sample.image} is {image.shape[1]}x{image.shape[0]} (width x height); they must match")
    bad = np.unique(label[(label >= classes) & (label != ignore)])
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:8]) + (" ..." if bad.size > 8 else "")
        shifted = " after the ADE20K shift (k -> k-1)" if dataset == "ade20k" else ""
        raise DataError(f"{sample.where}: label {sample.label} holds class ids {shown}{shifted}, but the config "
                        f"has classes={classes} (valid: 0..{classes - 1} and {ignore} for ignore); "
                        f"fix the label, or set classes to the number of classes of this data set")
    return image, label


def check_list(list_path: PathLike, data_root: PathLike, dataset: str, classes: int,
               ignore: int = IGNORE, jobs: int = 4) -> Tuple[int, List[str]]:
    """Run every check on every line: (number of samples, all problems as ``LIST:LINE: ...``)."""
    try:
        samples, problems = parse_list(list_path, data_root, dataset, check_files=True)
    except DataError as exc:
        return 0, [str(exc)]

    def one(sample: Sample) -> Optional[str]:
        try:
            load_sample(sample, classes, dataset, ignore)
        except DataError as exc:
            return str(exc)
        return None

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:   # OpenCV and zlib release the GIL
        found = [p for p in pool.map(one, samples) if p]
    # keep line order: parse problems and load problems interleaved by line number
    prefix = f"{list_path}:"

    def line_no(p: str) -> int:
        head = p[len(prefix):].split(":", 1)[0] if p.startswith(prefix) else ""
        return int(head) if head.isdigit() else 0

    all_problems = sorted(problems + found, key=line_no)
    return len(samples) + len(problems), all_problems


def dataset_lists(cfg: Dict[str, Any]) -> Tuple[Path, Path]:
    """Paths of the train and val list files of a config."""
    root = Path(os.path.expanduser(str(cfg["data_root"])))
    return root / cfg["train_list"], root / cfg["val_list"]
