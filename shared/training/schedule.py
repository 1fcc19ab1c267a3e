"""Learning rate per optimizer step: linear warmup from 0, then a half-cosine to min_lr.

A pure function of the step, so resuming needs no scheduler state and a prepared scheduler's
once-per-process stepping cannot skew it.
"""
from __future__ import annotations

import math


def warmup_cosine(step: int, *, peak: float, total_steps: int, warmup_steps: int = 0, min_lr: float = 0.0) -> float:
    if step < warmup_steps:
        return peak * step / warmup_steps
    if total_steps <= warmup_steps:
        return peak
    progress = min((step - warmup_steps) / (total_steps - warmup_steps), 1.0)
    return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def scaled_lr(base_lr: float, effective_batch: int, lr: float | None = None) -> float:
    """The MAE rule lr = base_lr * effective batch / 256, unless an absolute lr is given."""
    return lr if lr is not None else base_lr * effective_batch / 256


def set_lr(optimizer, lr: float) -> None:
    """Set every group's lr; a group's `lr_scale` (layer-wise decay) multiplies it."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def cosine_restarts(step: int, *, peak: float, period: int, min_lr: float = 0.0) -> float:
    """CosineAnnealingWarmRestarts (T_mult 1) per step: a half-cosine from peak to min_lr,
    restarted every `period` steps."""
    t = step % max(period, 1)
    return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t / max(period, 1)))
