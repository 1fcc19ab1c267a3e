"""A face-shards sample's crop: the dataset's image bytes through the face-preprocessing
contract (shared.face_crop), encoded as JPEG."""
from __future__ import annotations

import io
import math

from PIL import Image

from ..face_crop import Box, FaceCrop, crop_square, face_square
from ..pixels import display_size, upright_rgb


def crop_face(data: bytes, box: Box | None, spec: FaceCrop, quality: int) -> tuple[bytes, list[float], list[int]]:
    """Decode, crop the face square of `box` ((x0, y0, x1, y1) or None, see shared.face_crop),
    encode as JPEG.

    Returns (jpeg bytes, crop square in original pixels, original (width, height)), both in
    the upright picture a viewer shows (EXIF orientation applied, any pixel format made 8-bit
    RGB by shared.pixels, which raises UnsupportedPixels for the rest): the box is taken to be
    in those displayed pixels. Large JPEGs are decoded at a reduced DCT scale when the crop
    still has at least twice `spec.size` pixels, which is several times faster on AffectNet's
    multi-megapixel photos; the square is then scaled to the reduced picture.
    """
    img = Image.open(io.BytesIO(data))
    stored_w = img.size[0]
    orig_w, orig_h = display_size(img)
    square = face_square(box, spec.margin, orig_w, orig_h)
    side = square[2] - square[0]
    if side <= 1:
        raise ValueError(f"face box too small: {box}")
    if img.format == "JPEG" and side > 2 * spec.size:  # the same reduction on both axes, turned or not
        img.draft("RGB", (math.ceil(img.size[0] * spec.size / side), math.ceil(img.size[1] * spec.size / side)))
    scale = img.size[0] / stored_w
    face = crop_square(upright_rgb(img), tuple(v * scale for v in square), spec)
    out = io.BytesIO()
    face.save(out, format="JPEG", quality=quality)
    return out.getvalue(), [round(v, 2) for v in square], [orig_w, orig_h]
