"""Decode and augment a raw sample to a uint8 HxWx3 array; normalisation happens on the device.

Augmentations draw from a per-sample RNG (seeded by the sample's position in the stream), so a
resumed stream augments every sample exactly as the uninterrupted one did.

- `mae`:    RandomResizedCrop(size, scale, ratio) + horizontal flip (the MAE recipe)
- `resize`: plain resize to size + horizontal flip (face MAE variants)
- `eval`:   resize to size / crop_pct, centre crop to size
- `none`:   the stored image as is
"""
from __future__ import annotations

import io
import json
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .reading import PLACEHOLDER

KINDS = ("mae", "resize", "eval", "none")
_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


@dataclass(frozen=True)
class Augment:
    kind: str = "mae"
    size: int = 224
    scale: tuple[float, float] = (0.2, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    crop_pct: float = 0.875  # eval: the centre crop's share of the resized image
    interpolation: str = "bicubic"  # the MAE recipe's; "bilinear" is faster

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"augment kind {self.kind!r}; expected one of {KINDS}")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"interpolation {self.interpolation!r}; expected one of {tuple(_RESAMPLE)}")


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


def _crop_resize(img: Image.Image, box: tuple[float, float, float, float], aug: Augment) -> Image.Image:
    """Resize the region `box` (x0, y0, x1, y1) to size x size, decoding a JPEG at a reduced
    DCT scale first when the region is at least twice the output (faster, same quality)."""
    bw, bh = box[2] - box[0], box[3] - box[1]
    size = aug.size
    if img.format == "JPEG" and min(bw, bh) >= 2 * size:
        full = img.size
        img.draft("RGB", (math.ceil(full[0] * size / bw), math.ceil(full[1] * size / bh)))
        s = img.size[0] / full[0]
        box = tuple(v * s for v in box)
    img = img.convert("RGB")
    return img.resize((size, size), _RESAMPLE[aug.interpolation], box=box)


def augment_image(data: bytes, aug: Augment, rng: random.Random) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    width, height = img.size
    if aug.kind == "mae":
        left, top, w, h = random_resized_crop(width, height, aug.scale, aug.ratio, rng)
        out = _crop_resize(img, (left, top, left + w, top + h), aug)
    elif aug.kind == "resize":
        out = _crop_resize(img, (0, 0, width, height), aug)
    elif aug.kind == "eval":
        side = min(width, height) * aug.crop_pct
        x0, y0 = (width - side) / 2, (height - side) / 2
        out = _crop_resize(img, (x0, y0, x0 + side, y0 + side), aug)
    else:
        out = img.convert("RGB")
    if aug.kind in ("mae", "resize") and rng.random() < aug.hflip:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(out)


def decode_sample(sample: dict, aug: Augment, rng: random.Random) -> tuple[np.ndarray | None, dict, int]:
    """(image, metadata, label) of a raw sample; image None for a placeholder. Raises on corrupt data."""
    if PLACEHOLDER in sample:
        return None, {}, -1
    image = augment_image(sample["jpg"], aug, rng)
    meta = json.loads(sample["json"]) if "json" in sample else {}
    label = int(sample["cls"]) if "cls" in sample else -1
    return image, meta, label
