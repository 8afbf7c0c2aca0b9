import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from trainer.metrics import ConfusionMeter, confusion_matrix, scores


def test_confusion_matrix_by_hand():
    label = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 0, 2]])
    cm = confusion_matrix(pred, label, 3)
    # rows = label, cols = prediction; the 255 pixel is not counted
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert cm.dtype == np.int64


def test_scores_by_hand():
    cm = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    s = scores(cm)
    # IoU: c0 1/(2+2-1)=1/3, c1 2/(2+3-2)=2/3, c2 0/(1+0-0)=0
    np.testing.assert_allclose(s.iou, [1 / 3, 2 / 3, 0.0])
    assert s.miou == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    # Acc: c0 1/2, c1 2/2, c2 0/1
    assert s.macc == pytest.approx((0.5 + 1 + 0) / 3)
    assert s.allacc == pytest.approx(3 / 5)
    assert s.pixels == 5


def test_absent_class_is_left_out_but_false_positive_counts():
    # class 2 absent from labels and predictions: no IoU; class 3 only predicted: IoU 0
    cm = np.zeros((4, 4), np.int64)
    cm[0, 0], cm[1, 1], cm[1, 3] = 5, 3, 1
    s = scores(cm)
    assert np.isnan(s.iou[2]) and s.iou[3] == 0.0
    assert s.miou == pytest.approx((1.0 + 3 / 4 + 0.0) / 3)
    assert s.macc == pytest.approx((1.0 + 3 / 4) / 2)


def test_seed_line_format():
    cm = np.array([[9, 1], [0, 10]])
    s = scores(cm)
    assert s.line("VOC2012-AUG-ss") == f"VOC2012-AUG-ss:mIoU/mAcc/allAcc {s.miou:.4f}/{s.macc:.4f}/{s.allacc:.4f}."
    assert s.line("VOC2012-AUG-ss") == "VOC2012-AUG-ss:mIoU/mAcc/allAcc 0.9045/0.9500/0.9500."  # IoU (0.9 + 10/11) / 2


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 3)
    with pytest.raises(ValueError):
        confusion_matrix(np.full((2, 2), 3), np.zeros((2, 2)), 3)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 6), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_matrices_add_up_across_batches(classes, parts, seed):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, classes, (parts, 5, 7))
    label[rng.random(label.shape) < 0.1] = 255
    pred = rng.integers(0, classes, (parts, 5, 7))
    meter = ConfusionMeter(classes)
    for i in range(parts):
        meter.update(pred[i], label[i])
    whole = confusion_matrix(pred, label, classes)
    np.testing.assert_array_equal(meter.cm, whole)
    assert whole.sum() == int((label != 255).sum())
    s = scores(whole)
    assert s.allacc == pytest.approx(float(((pred == label) & (label != 255)).sum()) / max(1, whole.sum()))
    assert 0.0 <= s.miou <= 1.0 and 0.0 <= s.macc <= 1.0
