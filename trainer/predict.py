"""Whole-image prediction with a trained PSPNet: resize to base size, sliding-window crops, flip, scales.

As the seed's evaluation does (semseg's ``test.py``): for each scale ``s`` the image is resized so that
its long side is ``round(s * base_size)``; it is padded with the mean to at least ``crop_size``; crops of
``crop_size`` slide over it with a stride of ``ceil(crop_size * 2 / 3)``; the softmax of each crop (averaged
with the horizontally flipped crop when ``flip``) is summed into the image and divided by how many crops
covered each pixel; the result is resized back to the original size and summed over scales.  The argmax
is the prediction.  Every window has the same shape, so the net compiles once.

Used by trainer/eval.py and trainer/infer.py.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import cv2
import numpy as np

from trainer.data.transforms import MEAN, normalize


def load_net(cfg: Mapping[str, Any], ckpt: str, sync_bn: bool = False):
    """The config's PSPNet in eval mode with the weights of a trainer checkpoint (or a plain net checkpoint)."""
    import mindspore as ms
    from trainer.model import build_model
    path = Path(ckpt)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {ckpt}: no such file")
    net = build_model(dict(cfg, pretrained=""), sync_bn=sync_bn, verbose=False)
    params = ms.load_checkpoint(str(path))
    missing = ms.load_param_into_net(net, params, strict_load=False)
    if isinstance(missing, tuple):
        missing = missing[0]
    missing = [m for m in (missing or []) if m != "dropout_seed"]
    if missing:
        raise ValueError(f"checkpoint {ckpt} does not fit the config's model: {len(missing)} parameters missing "
                         f"(e.g. {', '.join(missing[:3])}); check classes/aux against the training config")
    net.set_train(False)
    return net


def probs_cell(net, flip: bool):
    """A cell: crops [1,3,C,C] -> softmax probabilities [classes,C,C] (flip-averaged when ``flip``)."""
    from mindspore import nn, ops

    class Probs(nn.Cell):
        def __init__(self, network, use_flip):
            super().__init__()
            self.network = network
            self.flip = use_flip

        def construct(self, x):
            if self.flip:
                both = ops.concat((x, ops.flip(x, (3,))), 0)
                p = ops.softmax(self.network(both), 1)
                return (p[0] + ops.flip(p[1:2], (3,))[0]) / 2
            return ops.softmax(self.network(x), 1)[0]

    cell = Probs(net, flip)
    cell.set_train(False)
    return cell


def windows(h: int, w: int, crop: int) -> List[Tuple[int, int]]:
    """Top-left corners of the sliding windows over an h x w image (h, w >= crop)."""
    stride = int(math.ceil(crop * 2 / 3))
    gh = int(math.ceil(max(h - crop, 0) / stride)) + 1
    gw = int(math.ceil(max(w - crop, 0) / stride)) + 1
    return [(min(i * stride, h - crop), min(j * stride, w - crop)) for i in range(gh) for j in range(gw)]


class Predictor:
    """``predict(image RGB uint8 HxWx3) -> class map int32 HxW`` (and ``probs``)."""

    def __init__(self, net, classes: int, crop: int, base_size: int, scales: Sequence[float] = (1.0,),
                 flip: bool = False) -> None:
        self.cell = probs_cell(net, flip)
        self.classes, self.crop, self.base = int(classes), int(crop), int(base_size)
        self.scales = [float(s) for s in scales]

    def _window_probs(self, image: np.ndarray) -> np.ndarray:
        from mindspore import Tensor
        crop = self.crop
        h0, w0 = image.shape[:2]
        ph, pw = max(crop - h0, 0), max(crop - w0, 0)
        top, left = ph // 2, pw // 2
        if ph or pw:
            image = cv2.copyMakeBorder(image.astype(np.float32), top, ph - top, left, pw - left,
                                       cv2.BORDER_CONSTANT, value=MEAN)
        h, w = image.shape[:2]
        out = np.zeros((self.classes, h, w), np.float32)
        count = np.zeros((h, w), np.float32)
        for y, x in windows(h, w, crop):
            chw = normalize(image[y:y + crop, x:x + crop])
            p = self.cell(Tensor(chw[None])).asnumpy()
            out[:, y:y + crop, x:x + crop] += p
            count[y:y + crop, x:x + crop] += 1
        out /= count[None]
        return out[:, top:top + h0, left:left + w0]

    def probs(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        total = np.zeros((self.classes, h, w), np.float32)
        for s in self.scales:
            long = max(1, int(round(s * self.base)))
            nh, nw = (long, max(1, int(round(w * long / h)))) if h >= w else (max(1, int(round(h * long / w))), long)
            scaled = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
            p = self._window_probs(scaled)
            total += np.stack([cv2.resize(c, (w, h), interpolation=cv2.INTER_LINEAR) for c in p])
        return total / len(self.scales)

    def predict(self, image: np.ndarray) -> np.ndarray:
        return self.probs(image).argmax(0).astype(np.int32)


def parse_scales(text: str) -> List[float]:
    try:
        scales = [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--scales {text!r}: expected comma-separated numbers such as 0.5,0.75,1.0") from None
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"--scales {text!r}: give positive scales such as 1.0 or 0.5,0.75,1.0,1.25,1.5,1.75")
    return scales


def describe(cfg: Dict[str, Any], scales: Sequence[float], flip: bool) -> str:
    return (f"base_size {cfg['base_size']}, crop {cfg['crop_size']}, scales {','.join(f'{s:g}' for s in scales)}"
            f"{', flip' if flip else ''}")
