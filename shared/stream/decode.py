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

`plan_sample` is the other way to the same images: it draws the crop box and the flip from the
same RNG in the same order, but leaves decoding (or only the crop, resize and flip) to the device
(`shared.training.device_input`), for GPU nodes with few CPU cores per GPU.
"""
from __future__ import annotations

import functools
import itertools
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

from ..pixels import open_rgb
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
    third faster than PIL's, same pixels; face-shards crops are stored upright, without EXIF
    orientation), anything else through shared.pixels (any mode to 8-bit RGB)."""
    if data[:2] == b"\xff\xd8":
        return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    return torch.from_numpy(np.array(open_rgb(data))).permute(2, 0, 1)


def centre_crop_box(width: int, height: int, crop_pct: float) -> tuple[int, int, int, int]:
    """(left, top, side, side): the centred square, `crop_pct` of the shorter side, that evaluation
    resizes to the encoder's input (stage 2's validation and stage 3's frame encoder alike)."""
    side = round(min(width, height) * crop_pct)
    return (width - side) // 2, (height - side) // 2, side, side


def draw_geometry(width: int, height: int, aug: Augment, rng: random.Random) -> tuple[tuple[int, int, int, int], bool]:
    """The crop box (left, top, w, h) and the horizontal flip of one image, drawn from `rng` in
    the order `augment_image` always drew them (crop, then flip): both decode paths agree."""
    if aug.kind in ("mae", "finetune"):
        box = random_resized_crop(width, height, aug.scale, aug.ratio, rng)
    elif aug.kind == "eval":
        box = centre_crop_box(width, height, aug.crop_pct)
    else:  # resize, none: the whole image
        box = (0, 0, width, height)
    flip = aug.kind in ("mae", "finetune", "resize") and rng.random() < aug.hflip
    return box, flip


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
    box, flip = draw_geometry(width, height, aug, rng)
    out = image if aug.kind == "none" else _crop_resize(image, box, aug)
    if flip:
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


# ----------------------------------------------------------------------------- device-side decoding

# start-of-frame markers (baseline, extended, progressive, lossless; Huffman or arithmetic coded)
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's frame header, without decoding it (a few microseconds, where
    a decode takes a few hundred). Raises ValueError when there is no valid frame header, or no
    end-of-image marker after it: a truncated file, which the CPU decoder refuses too (FF D9
    cannot occur inside entropy-coded data, so finding it means the scan is complete)."""
    width, height, frame = _frame_header(data)
    if data.rfind(b"\xff\xd9") < frame:
        raise ValueError("JPEG: truncated (no end-of-image marker)")
    return width, height


def _frame_header(data: bytes) -> tuple[int, int, int]:
    """(width, height, offset of the frame header)."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise ValueError(f"JPEG: no marker at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            break
        if marker in _SOF and i + 9 <= n:
            height, width = int.from_bytes(data[i + 5:i + 7], "big"), int.from_bytes(data[i + 7:i + 9], "big")
            if width and height:
                return width, height, i
            break
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    raise ValueError("JPEG: no frame header with a size")


@dataclass(frozen=True)
class Planned:
    """One image for the device: its bytes, either a JPEG (decoded there) or decoded HxWx3
    pixels, and the crop box and flip that `augment_image` would have applied."""
    payload: np.ndarray  # uint8, 1-D
    jpeg: bool
    height: int
    width: int
    box: tuple[int, int, int, int]  # left, top, w, h
    flip: bool


# what the stream hands over per sample: augmented pixels, or a plan for the device
OUTPUTS = ("pixels", "decoded", "jpeg")


def plan_image(data: bytes, aug: Augment, rng: random.Random, *, decode: bool) -> Planned:
    """The device-side counterpart of `augment_image`: the same draws from `rng`, no resampling.
    `decode=False` keeps JPEGs encoded (only their header is read); other formats, or
    `decode=True`, are decoded here. Raises on a JPEG without a readable frame header."""
    if not decode and data[:2] == b"\xff\xd8":
        width, height = jpeg_size(data)
        payload, jpeg = np.frombuffer(data, np.uint8), True
    else:
        image = decode_image(data)  # (3, H, W), channels-last in memory: HxWx3 bytes without a copy
        height, width = image.shape[1:]
        payload, jpeg = image.permute(1, 2, 0).contiguous().numpy().reshape(-1), False
    box, flip = draw_geometry(width, height, aug, rng)
    return Planned(payload, jpeg, height, width, box, flip)


def plan_sample(sample: dict, aug: Augment, rng: random.Random, *, decode: bool) -> tuple[Planned | None, dict, int]:
    """`decode_sample` for the device paths: (plan, metadata, label); plan None for a placeholder."""
    if PLACEHOLDER in sample:
        return None, {}, -1
    planned = plan_image(sample["jpg"], aug, rng, decode=decode)
    meta = json.loads(sample["json"]) if "json" in sample else {}
    label = int(sample["cls"]) if "cls" in sample else -1
    return planned, meta, label


def pack_plans(plans: list[Planned | None], aug: Augment) -> dict:
    """One batch of plans as a few tensors (one buffer for all bytes: one transfer between
    processes instead of one per image). A placeholder (None) becomes a black image, as in
    `pixels` batches."""
    blank = Planned(np.zeros(aug.size * aug.size * 3, np.uint8), False, aug.size, aug.size,
                    (0, 0, aug.size, aug.size), False)
    plans = [p if p is not None else blank for p in plans]
    offsets = np.zeros(len(plans) + 1, np.int64)
    np.cumsum([p.payload.size for p in plans], out=offsets[1:])
    payload = np.concatenate([p.payload for p in plans]) if plans else np.zeros(0, np.uint8)  # an empty part
    return {"data": torch.from_numpy(payload),
            "offsets": torch.from_numpy(offsets),
            "jpeg": torch.tensor([p.jpeg for p in plans]),
            "shape": torch.tensor([(p.height, p.width) for p in plans], dtype=torch.int64).view(-1, 2),
            "box": torch.tensor([p.box for p in plans], dtype=torch.int64).view(-1, 4),
            "flip": torch.tensor([p.flip for p in plans]),
            "size": aug.size, "interpolation": aug.interpolation}


def merge_plans(packs: list[dict]) -> dict:
    """Packed plans of consecutive parts of a batch (`pack_plans`) as one pack."""
    ends = [p["offsets"][-1] for p in packs]
    shifts = [0, *itertools.accumulate(int(e) for e in ends[:-1])]
    offsets = torch.cat([packs[0]["offsets"][:1]] + [p["offsets"][1:] + shift for p, shift in zip(packs, shifts)])
    return {"data": torch.cat([p["data"] for p in packs]), "offsets": offsets,
            **{k: torch.cat([p[k] for p in packs]) for k in ("jpeg", "shape", "box", "flip")},
            "size": packs[0]["size"], "interpolation": packs[0]["interpolation"]}
