"""Poly learning rate, per iteration over the whole run, as arrays the optimizer indexes on device.

The schedule of the PSPNet paper (and of the model zoo's ``src/utils/lr.py``)::

    lr(i) = base_lr * (1 - i / total_steps) ** power        i = 0 .. total_steps - 1 (global step, 0-based)

The first step runs at ``base_lr``; the schedule never reaches zero inside the run.  The optimizer gets
the whole array as a Tensor and picks ``lr[global_step]`` itself, so the host never feeds it a value
(no host sync), and a resumed run that restores the optimizer's ``global_step`` resumes the schedule
exactly where it stopped.  No MindSpore import here: the arrays are numpy, tests need nothing else.
"""
from __future__ import annotations

from typing import Dict

import numpy as np


def poly_lr(base_lr: float, total_steps: int, power: float = 0.9, end_lr: float = 0.0) -> np.ndarray:
    """float32 array of ``total_steps`` learning rates decaying from ``base_lr`` towards ``end_lr``."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    if base_lr <= 0:
        raise ValueError(f"base_lr must be positive, got {base_lr}")
    i = np.arange(total_steps, dtype=np.float64)
    lr = (base_lr - end_lr) * (1.0 - i / total_steps) ** power + end_lr
    return lr.astype(np.float32)


def group_schedules(cfg: Dict, total_steps: int) -> Dict[str, np.ndarray]:
    """The two parameter groups' schedules: backbone at init_lr, heads at head_lr_mult x init_lr."""
    backbone = poly_lr(float(cfg["init_lr"]), total_steps, float(cfg["lr_power"]))
    heads = (backbone.astype(np.float64) * float(cfg["head_lr_mult"])).astype(np.float32)
    return {"backbone": backbone, "head": heads}


def lr_at(schedule: np.ndarray, global_step: int) -> float:
    """The learning rate used by the step that follows ``global_step`` completed steps (clipped at the end)."""
    return float(schedule[min(max(int(global_step), 0), len(schedule) - 1)])
