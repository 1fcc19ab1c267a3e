"""The face-preprocessing contract: how a face box in a picture becomes the square crop that
every stage stores and the encoders see.

One spec (`FaceCrop`) and one function (`crop_face`) serve every `face-shards` converter (the
faces stage 1 and stage 2 train and evaluate on) and stage 3a's per-frame face crops (what the
frozen encoder sees downstream), so a face is framed and resampled the same way wherever it
comes from:

- box: (x0, y0, x1, y1) in the picture's pixels (`BOX`). Readers whose dataset gives
  (x, y, width, height) convert at their edge with `xywh_to_xyxy`, never inside the crop;
- square: centred on the box, its side the box's longer side plus `margin` of that side on
  each edge; without a box (aligned datasets) the centred square of the shorter image side;
- pixels: the square's corner and side rounded to whole pixels; parts outside the picture are
  black (the face stays centred, never stretched or shifted);
- resampler: `resample` (PIL's bicubic, antialiased when shrinking) to `size` x `size`.

What an encoder then does with the stored crop (centre crop share, input size, interpolation,
mean, std) is the encoder's own evaluation preprocessing, recorded in its timm folder's
`pretrained_cfg` (shared/export.py) and applied by whoever loads it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in picture pixels
BOX = "xyxy"
SQUARES = ("longer-side",)
RESAMPLERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
              "lanczos": Image.Resampling.LANCZOS}


@dataclass(frozen=True)
class FaceCrop:
    """How a face box becomes the stored square crop (see the module docstring).

    `box` and `square` name the conventions in force (recorded in manifests and face tracks so a
    reader knows them); only the values above exist. Raises ValueError for any other value or a
    size / margin out of range.
    """

    size: int = 256  # side of the square crop, pixels
    margin: float = 0.2  # added on each edge, as a fraction of the box's longer side
    resample: str = "bicubic"  # one of RESAMPLERS
    square: str = "longer-side"  # one of SQUARES
    box: str = BOX  # the convention crop_face takes

    def __post_init__(self):
        if self.box != BOX:
            raise ValueError(f"box convention {self.box!r}: crop_face takes {BOX!r}; convert at the reader")
        if self.square not in SQUARES:
            raise ValueError(f"square {self.square!r}; expected one of {SQUARES}")
        if self.resample not in RESAMPLERS:
            raise ValueError(f"resample {self.resample!r}; expected one of {sorted(RESAMPLERS)}")
        if not (self.size >= 1 and 0 <= self.margin and math.isfinite(self.margin)):
            raise ValueError(f"size {self.size} / margin {self.margin}: need size >= 1 and a margin >= 0")


def xywh_to_xyxy(box: tuple[float, float, float, float]) -> Box:
    """A dataset's (x, y, width, height) -> the contract's (x0, y0, x1, y1)."""
    x, y, w, h = box
    return x, y, x + w, y + h


def face_square(box: Box | None, margin: float, width: int, height: int) -> Box:
    """The square (x0, y0, x1, y1) to crop from a width x height picture, in its pixels (floats,
    possibly reaching outside the picture). Raises ValueError for a box with no area."""
    if box is None:
        side = min(width, height)
        x0, y0 = (width - side) / 2, (height - side) / 2
        return x0, y0, x0 + side, y0 + side
    x0, y0, x1, y1 = box
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"face box {tuple(box)} has no area (expected x0 < x1, y0 < y1)")
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2


def crop_square(image: Image.Image, square: Box, spec: FaceCrop) -> Image.Image:
    """`square` (x0, y0, x1, y1, in `image`'s pixels) cut out with black beyond the edges and
    resized to spec.size x spec.size with spec.resample. Raises ValueError for a square under
    one pixel."""
    side = square[2] - square[0]
    if side < 1:
        raise ValueError(f"crop square {tuple(round(v, 2) for v in square)} is under one pixel")
    left, top, n = round(square[0]), round(square[1]), round(side)
    face = image.crop((left, top, left + n, top + n))  # PIL pads beyond the edges with zeros: black
    return face.resize((spec.size, spec.size), RESAMPLERS[spec.resample])


def crop_face(image: Image.Image | np.ndarray, box: Box | None, spec: FaceCrop) -> Image.Image:
    """A picture (PIL RGB image, or HxWx3 uint8 array) and a face box (x0, y0, x1, y1, or None
    for the centred square) -> the spec.size x spec.size RGB crop of the contract."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    return crop_square(image, face_square(box, spec.margin, *image.size), spec)
