"""Stage 2's batch-level augmentation and loss, drawn per sample so that a step is the same on any
number of processes (and after a resume onto another one).

timm's Mixup draws one lambda per process batch and pairs sample i with B - 1 - i of that batch,
and RandomErasing draws from the process's RNG: both change with the way a global batch is
split. Here every draw comes from the seed, the step and the sample's position in the global
step: mixup / cutmix pair neighbouring positions (2j, 2j + 1) with a lambda per pair (timm's
mode="pair"), random erasing draws per sample (timm's mode="pixel", one box), and the loss is
the sum over the samples that count (not padding, not mixed with padding) divided by the
micro-batch size, so the step's gradient is the same sum / G however the step is split.
"""
from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F

from shared.errors import UserError
from shared.stream.reading import derive_seed


def erase(x: torch.Tensor, positions: list[int], *, seed: int, step: int, prob: float) -> torch.Tensor:
    """timm RandomErasing(prob, mode="pixel") per sample: with probability `prob`, one box of
    2-33 % of the area, aspect 0.3-3.3, filled with normal noise (x normalised, (B, C, H, W))."""
    x = x.clone()
    _, c, h, w = x.shape
    for i, position in enumerate(positions):
        rng = random.Random(derive_seed(seed, "erase", step, position))
        if rng.random() >= prob:
            continue
        for _ in range(10):
            area = rng.uniform(0.02, 1 / 3) * h * w
            aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
            eh, ew = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if eh < h and ew < w:
                top, left = rng.randint(0, h - eh), rng.randint(0, w - ew)
                noise = torch.randn((c, eh, ew), generator=torch.Generator().manual_seed(rng.getrandbits(63)))
                x[i, :, top:top + eh, left:left + ew] = noise.to(x.device, x.dtype)
                break
    return x


def _cutmix_box(rng: random.Random, lam: float, h: int, w: int) -> tuple[int, int, int, int]:
    """timm's rand_bbox: a box of about (1 - lam) of the area, centred anywhere, clipped."""
    ratio = math.sqrt(1 - lam)
    ch, cw = int(h * ratio), int(w * ratio)
    cy, cx = rng.randint(0, h - 1), rng.randint(0, w - 1)
    return (min(max(cy - ch // 2, 0), h), min(max(cy + ch // 2, 0), h),
            min(max(cx - cw // 2, 0), w), min(max(cx + cw // 2, 0), w))


def mix(x: torch.Tensor, target: torch.Tensor, positions: list[int], *, seed: int, step: int,
        mixup_alpha: float, cutmix_alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or cutmix (one chosen per pair, as timm's switch_prob 0.5 when both are on) of the
    pairs of neighbouring positions; (x (B, C, H, W), soft targets (B, K)) -> the mixed ones."""
    if len(positions) % 2 or positions[0] % 2:
        raise UserError(f"mixup / cutmix pair neighbouring samples: the micro-batch per process ({len(positions)}) "
                        "must be even; change data.batch_size or data.global_batch")
    x, target = x.clone(), target.clone()
    _, _, h, w = x.shape
    for i in range(0, len(positions), 2):
        rng = random.Random(derive_seed(seed, "mix", step, positions[i]))
        cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < 0.5)
        lam = rng.betavariate(*(2 * (cutmix_alpha if cutmix else mixup_alpha,)))
        a, b = x[i].clone(), x[i + 1].clone()
        if cutmix:
            y0, y1, x0, x1 = _cutmix_box(rng, lam, h, w)
            x[i, :, y0:y1, x0:x1], x[i + 1, :, y0:y1, x0:x1] = b[:, y0:y1, x0:x1], a[:, y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
        else:
            x[i], x[i + 1] = lam * a + (1 - lam) * b, lam * b + (1 - lam) * a
        ta, tb = target[i].clone(), target[i + 1].clone()
        target[i], target[i + 1] = lam * ta + (1 - lam) * tb, lam * tb + (1 - lam) * ta
    return x, target


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, denominator: int,
                       class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """sum_i weight_i * CE(logits_i, target_i) / denominator; with class weights each sample's
    loss is weighted by its target's (they average 1 over the training split, so dividing by the
    micro-batch size keeps the scale of torch's weighted mean)."""
    per_class = -target * F.log_softmax(logits.float(), dim=-1)  # (B, K)
    if class_weights is not None:
        per_class = per_class * class_weights
    return (per_class.sum(-1) * weight).sum() / denominator


class Objective:
    """The stage-2 loss of a micro-batch, with its erasing and mixing drawn per sample."""

    def __init__(self, *, num_classes: int, seed: int, reprob: float, mixup: float, cutmix: float,
                 label_smoothing: float, class_weights: torch.Tensor | None):
        self.num_classes, self.seed, self.reprob = num_classes, seed, reprob
        self.mixup, self.cutmix, self.smoothing, self.class_weights = mixup, cutmix, label_smoothing, class_weights

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, step: int,
                 positions: list[int]) -> torch.Tensor:
        valid = valid.to(x.device)
        y = y.clamp(min=0)  # padding's -1: its loss is weighted 0 below
        target = F.one_hot(y, self.num_classes).float() * (1 - self.smoothing) + self.smoothing / self.num_classes
        if self.reprob > 0:
            x = erase(x, positions, seed=self.seed, step=step, prob=self.reprob)
        weight = valid.float()
        if self.mixup > 0 or self.cutmix > 0:
            x, target = mix(x, target, positions, seed=self.seed, step=step, mixup_alpha=self.mixup,
                            cutmix_alpha=self.cutmix)
            weight = weight * weight.view(-1, 2).flip(1).reshape(-1)  # a pair with padding does not count
        return soft_cross_entropy(model(x), target, weight, x.shape[0], self.class_weights)
