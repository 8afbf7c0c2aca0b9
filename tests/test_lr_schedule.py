import numpy as np
import pytest

from trainer.lr import group_schedules, lr_at, poly_lr


def test_poly_values_by_hand():
    lr = poly_lr(0.01, 4, power=0.9)
    expected = [0.01 * (1 - i / 4) ** 0.9 for i in range(4)]
    assert lr.dtype == np.float32
    np.testing.assert_allclose(lr, expected, rtol=1e-6)
    assert lr[0] == pytest.approx(0.01)
    assert lr[-1] == pytest.approx(0.01 * 0.25 ** 0.9, rel=1e-6)


def test_poly_is_strictly_decreasing_and_positive():
    lr = poly_lr(0.02, 1000, power=0.9)
    assert np.all(np.diff(lr) < 0)
    assert lr.min() > 0


def test_power_one_is_linear():
    np.testing.assert_allclose(poly_lr(1.0, 5, power=1.0), [1.0, 0.8, 0.6, 0.4, 0.2], rtol=1e-6)


def test_head_groups_run_at_the_multiple():
    cfg = {"init_lr": 0.01, "lr_power": 0.9, "head_lr_mult": 10.0}
    s = group_schedules(cfg, 7)
    np.testing.assert_allclose(s["head"], 10 * s["backbone"], rtol=1e-6)
    assert s["backbone"][0] == pytest.approx(0.01)


def test_lr_at_clips_to_the_schedule():
    lr = poly_lr(0.1, 3)
    assert lr_at(lr, 0) == pytest.approx(0.1)
    assert lr_at(lr, 2) == lr[2]
    assert lr_at(lr, 99) == lr[2]


@pytest.mark.parametrize("bad", [dict(base_lr=0.01, total_steps=0), dict(base_lr=0.0, total_steps=3)])
def test_bad_schedules_are_refused(bad):
    with pytest.raises(ValueError):
        poly_lr(**bad)
