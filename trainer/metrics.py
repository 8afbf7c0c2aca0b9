"""Segmentation metrics from a confusion matrix (numpy only).

``cm[t, p]`` counts pixels of true class ``t`` predicted as ``p``; pixels labelled ``ignore`` (255) or
outside ``0..classes-1`` are not counted.  From it, per class::

    IoU_c = cm[c, c] / (row_c + col_c - cm[c, c])       Acc_c = cm[c, c] / row_c

``mIoU`` is the mean IoU over the classes that occur in the labels or in the predictions (a class absent
from both has no IoU and is left out, as mmsegmentation does; a class predicted but absent from the labels
counts with IoU 0).  ``mAcc`` is the mean accuracy over classes present in the labels; ``allAcc`` is the
pixel accuracy.  Confusion matrices are int64 and simply add up across batches, images and ranks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np

IGNORE = 255


def confusion_matrix(pred: np.ndarray, label: np.ndarray, classes: int, ignore: int = IGNORE) -> np.ndarray:
    """int64 [classes, classes] confusion matrix (rows: label, columns: prediction)."""
    pred = np.asarray(pred)
    label = np.asarray(label)
    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from label shape {label.shape}")
    label = label.astype(np.int64, copy=False).ravel()
    pred = pred.astype(np.int64, copy=False).ravel()
    keep = (label != ignore) & (label >= 0) & (label < classes)
    if pred.size and (pred.min() < 0 or pred.max() >= classes):
        raise ValueError(f"predictions must lie in 0..{classes - 1}")
    counts = np.bincount(label[keep] * classes + pred[keep], minlength=classes * classes)
    return counts.reshape(classes, classes).astype(np.int64)


@dataclass(frozen=True)
class Scores:
    miou: float
    macc: float
    allacc: float
    iou: np.ndarray          # per class, NaN where the class is in neither labels nor predictions
    acc: np.ndarray          # per class, NaN where the class is absent from the labels
    pixels: int              # labelled (non-ignored) pixels counted

    def line(self, prefix: str = "") -> str:
        """The seed's evaluation line, e.g. ``VOC2012-AUG-ss:mIoU/mAcc/allAcc 0.6929/0.8305/0.9232.``"""
        head = f"{prefix}:" if prefix else ""
        return f"{head}mIoU/mAcc/allAcc {self.miou:.4f}/{self.macc:.4f}/{self.allacc:.4f}."

    def per_class_lines(self, names: Optional[List[str]] = None) -> List[str]:
        out = []
        for c, (i, a) in enumerate(zip(self.iou, self.acc)):
            name = names[c] if names and c < len(names) else str(c)
            iou = "   -  " if np.isnan(i) else f"{i:.4f}"
            acc = "   -  " if np.isnan(a) else f"{a:.4f}"
            out.append(f"Class_{c} {name}: iou/accuracy {iou}/{acc}.")
        return out


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else 0.0


def scores(cm: np.ndarray) -> Scores:
    """mIoU, mAcc, allAcc and per-class IoU/accuracy from a confusion matrix."""
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
    tp = np.diag(cm)
    rows = cm.sum(axis=1)            # label pixels per class
    cols = cm.sum(axis=0)            # predicted pixels per class
    union = rows + cols - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)
        acc = np.where(rows > 0, tp / np.where(rows > 0, rows, 1), np.nan)
    total = rows.sum()
    allacc = float(tp.sum() / total) if total > 0 else 0.0
    return Scores(miou=_nanmean(iou), macc=_nanmean(acc), allacc=allacc, iou=iou, acc=acc, pixels=int(total))


class ConfusionMeter:
    """Accumulates a confusion matrix over batches."""

    def __init__(self, classes: int, ignore: int = IGNORE) -> None:
        self.classes = int(classes)
        self.ignore = int(ignore)
        self.cm = np.zeros((self.classes, self.classes), np.int64)

    def update(self, pred: np.ndarray, label: np.ndarray) -> None:
        self.cm += confusion_matrix(pred, label, self.classes, self.ignore)

    def scores(self) -> Scores:
        return scores(self.cm)
