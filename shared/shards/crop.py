"""Square face crops from a dataset's own box, encoded as JPEG."""
from __future__ import annotations

import io
import math

from PIL import Image

from ..pixels import display_size, upright_rgb


def square_around(box: tuple[float, float, float, float] | None, margin: float,
                  width: int, height: int) -> tuple[float, float, float, float]:
    """The square (x0, y0, x1, y1) to crop, in the image's pixels.

    With a box (x, y, w, h) the square is centred on it, its side the box's longer side plus
    `margin` times that side on each edge; it may reach outside the image (padded with black,
    so the face stays centred). Without a box (aligned datasets) the centred square of the
    shorter image side is used.
    """
    if box is None:
        side = min(width, height)
        x0, y0 = (width - side) / 2, (height - side) / 2
        return x0, y0, x0 + side, y0 + side
    x, y, w, h = box
    side = max(w, h) * (1 + 2 * margin)
    cx, cy = x + w / 2, y + h / 2
    return cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2


def crop_face(data: bytes, box, margin: float, size: int, quality: int) -> tuple[bytes, list[float], list[int]]:
    """Decode, crop the face square, resize to size x size, encode as JPEG.

    Returns (jpeg bytes, crop square in original pixels, original (width, height)), both in
    the upright picture a viewer shows (EXIF orientation applied, any pixel format made 8-bit
    RGB by shared.pixels, which raises UnsupportedPixels for the rest): the box is taken to be
    in those displayed pixels. Large JPEGs are decoded at a reduced DCT scale when the crop
    still has at least `size` pixels, which is several times faster on AffectNet's
    multi-megapixel photos.
    """
    img = Image.open(io.BytesIO(data))
    stored_w = img.size[0]
    orig_w, orig_h = display_size(img)
    square = square_around(box, margin, orig_w, orig_h)
    side = square[2] - square[0]
    if side <= 1:
        raise ValueError(f"face box too small: {box}")
    if img.format == "JPEG" and side > 2 * size:  # the same reduction on both axes, turned or not
        img.draft("RGB", (math.ceil(img.size[0] * size / side), math.ceil(img.size[1] * size / side)))
    scale = img.size[0] / stored_w
    img = upright_rgb(img)
    scaled = tuple(round(v * scale) for v in square)
    face = img.crop(scaled).resize((size, size), Image.BICUBIC, reducing_gap=3.0)
    out = io.BytesIO()
    face.save(out, format="JPEG", quality=quality)
    return out.getvalue(), [round(v, 2) for v in square], [orig_w, orig_h]
