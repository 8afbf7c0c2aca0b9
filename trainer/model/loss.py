"""PSPNet loss: pixel-wise softmax cross-entropy with an ignore label, main + aux_weight * aux.

Mean over valid pixels of the whole batch (PyTorch's ``CrossEntropyLoss(ignore_index=255)``), except
that a batch without a single valid pixel gives 0 instead of NaN.  Graph-mode friendly: no host syncs,
no data-dependent shapes.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops


class SegCrossEntropy(nn.Cell):
    """``construct(logits (N,C,H,W), labels (N,H,W) int) -> scalar``."""

    def __init__(self, ignore_label: int = 255):
        super().__init__()
        self.ignore_label = int(ignore_label)

    def construct(self, logits, labels):
        labels = labels.astype(ms.int32)
        valid = labels != self.ignore_label
        target = ops.select(valid, labels, ops.zeros_like(labels))
        logp = ops.log_softmax(logits.astype(ms.float32), 1)
        picked = ops.gather_elements(logp, 1, ops.expand_dims(target, 1)).squeeze(1)
        validf = valid.astype(ms.float32)
        count = validf.sum()
        return (0.0 - (picked * validf).sum()) / ops.maximum(count, 1.0)


class PSPLoss(nn.Cell):
    """``construct(outputs, labels)``: ``outputs`` is the net's output, ``(main, aux)`` or ``main``
    (eval mode, or no aux head); the aux term is added with ``aux_weight`` when present."""

    def __init__(self, ignore_label: int = 255, aux_weight: float = 0.4):
        super().__init__()
        self.ce = SegCrossEntropy(ignore_label)
        self.aux_weight = float(aux_weight)

    def construct(self, outputs, labels):
        if isinstance(outputs, (tuple, list)):
            return self.ce(outputs[0], labels) + self.aux_weight * self.ce(outputs[1], labels)
        return self.ce(outputs, labels)
