"""Decode and augment a raw sample to a uint8 HxWx3 array; normalisation happens on the device.

Augmentations draw from a per-sample RNG (seeded by the sample's position in the stream), so a
resumed stream augments every sample exactly as the uninterrupted one did.

- `mae`:    RandomResizedCrop(size, scale, ratio) + horizontal flip (the MAE recipe)
- `finetune`: the same crop and flip, then timm's RandAugment (`auto_augment`, e.g.
            "rand-m9-mstd0.5-inc1"), the MAE fine-tuning recipe (its random erasing, mixup and
            cutmix act on the device batch)
- `resize`: plain resize to size + horizontal flip (face MAE variants)
- `eval`:   resize to size / crop_pct, centre crop to size
- `none`:   the stored image as is
"""
from __future__ import annotations

import functools
import io
import json
import math
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import rand_augment_transform
from torchvision.io import ImageReadMode, decode_jpeg

from .reading import PLACEHOLDER

KINDS = ("mae", "finetune", "resize", "eval", "none")
INTERPOLATIONS = ("bilinear", "bicubic")


@dataclass(frozen=True)
class Augment:
    kind: str = "mae"
    size: int = 224
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    crop_pct: float = 0.875  # eval: the centre crop's share of the resized image
    interpolation: str = "bicubic"  # the MAE recipe's; "bilinear" is faster
    auto_augment: str | None = None  # finetune: a timm RandAugment config string
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # RandAugment's fill colour

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"augment kind {self.kind!r}; expected one of {KINDS}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r}; expected one of {INTERPOLATIONS}")


def random_resized_crop(width: int, height: int, scale, ratio, rng: random.Random) -> tuple[int, int, int, int]:
    """(left, top, w, h) as torchvision's RandomResizedCrop draws it, from `rng`."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    # fallback: the whole image clipped to the ratio range, centred
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def decode_image(data: bytes) -> torch.Tensor:
    """Encoded bytes -> uint8 (3, H, W). JPEGs through torchvision's libjpeg-turbo decoder (a
    third faster than PIL's, same pixels), anything else through PIL."""
    if data[:2] == b"\xff\xd8":
        return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    return torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1)


def _crop_resize(image: torch.Tensor, box: tuple[int, int, int, int], aug: Augment) -> torch.Tensor:
    """Crop (left, top, w, h) and resize to size x size with antialiasing, as torchvision's
    RandomResizedCrop does, but on uint8 channels-last data (several times faster than PIL)."""
    left, top, w, h = box
    crop = image[None, :, top:top + h, left:left + w].contiguous(memory_format=torch.channels_last)
    return F.interpolate(crop, size=(aug.size, aug.size), mode=aug.interpolation, antialias=True)[0]


def augment_image(data: bytes, aug: Augment, rng: random.Random) -> np.ndarray:
    """Returns HxWx3 uint8."""
    image = decode_image(data)
    height, width = image.shape[1:]
    if aug.kind in ("mae", "finetune"):
        out = _crop_resize(image, random_resized_crop(width, height, aug.scale, aug.ratio, rng), aug)
    elif aug.kind == "resize":
        out = _crop_resize(image, (0, 0, width, height), aug)
    elif aug.kind == "eval":
        side = round(min(width, height) * aug.crop_pct)
        out = _crop_resize(image, ((width - side) // 2, (height - side) // 2, side, side), aug)
    else:
        out = image
    if aug.kind in ("mae", "finetune", "resize") and rng.random() < aug.hflip:
        out = out.flip(-1)
    if aug.kind == "finetune" and aug.auto_augment:
        out = _rand_augment(out, aug, rng)
    return out.permute(1, 2, 0).numpy()


@functools.lru_cache(maxsize=8)
def _rand_augment_op(config: str, size: int, mean: tuple[float, ...]):
    hparams = {"translate_const": int(size * 0.45), "img_mean": tuple(min(255, round(255 * m)) for m in mean)}
    return rand_augment_transform(config, hparams)


def _rand_augment(image: torch.Tensor, aug: Augment, rng: random.Random) -> torch.Tensor:
    """timm's RandAugment on a (3, H, W) uint8 image. It draws from the global `random` and
    numpy RNGs, so they are seeded from this sample's RNG (a resumed stream augments alike)
    and restored afterwards (the training process's own draws stay untouched)."""
    op = _rand_augment_op(aug.auto_augment, aug.size, tuple(aug.mean))
    py_state, np_state = random.getstate(), np.random.get_state()
    seed = rng.getrandbits(32)
    random.seed(seed)
    np.random.seed(seed)
    try:
        pil = op(Image.fromarray(image.permute(1, 2, 0).contiguous().numpy()))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return torch.from_numpy(np.array(pil)).permute(2, 0, 1)


def decode_sample(sample: dict, aug: Augment, rng: random.Random) -> tuple[np.ndarray | None, dict, int]:
    """(image, metadata, label) of a raw sample; image None for a placeholder. Raises on corrupt data."""
    if PLACEHOLDER in sample:
        return None, {}, -1
    image = augment_image(sample["jpg"], aug, rng)
    meta = json.loads(sample["json"]) if "json" in sample else {}
    label = int(sample["cls"]) if "cls" in sample else -1
    return image, meta, label
