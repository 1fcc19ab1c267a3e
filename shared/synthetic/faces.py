"""Drawn, face-like pictures for testing the dataset converters offline.

Real face datasets cannot ship with the tests, so converters are exercised on drawings whose
properties are easy to check afterwards:

- the face is a flat skin-coloured ellipse filling its box, and every facial feature keeps
  clear of the box centre, so the centre pixel of a correct crop is exactly the skin colour
  (up to JPEG error);
- skin hues (orange) are kept out of the background palette (greens, blues, purples), so a
  crop taken from the wrong place does not pass as a face by accident;
- backgrounds are smooth random colour fields, so perceptual hashes of different pictures
  differ clearly and de-duplication code sees them as distinct images.

Feature positions are fixed fractions of the face box, which lets `landmarks_68` and
`landmarks_5` report points that match the drawing without returning extra state.
"""

from __future__ import annotations

import colorsys
import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Box = tuple[int, int, int, int]
RGB = tuple[int, int, int]
Point = tuple[float, float]

# Feature geometry as (u, v) fractions of the face box. The nearest feature edge is at least
# 0.08 of the box size away from the centre (0.5, 0.5); that margin keeps the centre pixel pure
# skin after JPEG's 8x8 / 16x16 block coding for boxes of 60 px and more.
_EYE_U = (0.32, 0.68)
_EYE_V = 0.36
_EYE_RU, _EYE_RV = 0.085, 0.045
_BROW_V = 0.26
_NOSE_TOP, _NOSE_TIP = 0.58, 0.67
_MOUTH_V = 0.77
_MOUTH_HALF = 0.17


def _hsv_rgb(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return round(r * 255), round(g * 255), round(b * 255)


def random_skin(rng: np.random.Generator) -> RGB:
    """A plausible skin tone: orange hue, moderate saturation, light to dark value.

    The hue band (11-36 degrees) is disjoint from the background band, so skin and background
    cannot be confused by a colour check.
    """
    return _hsv_rgb(rng.uniform(0.03, 0.10), rng.uniform(0.25, 0.55), rng.uniform(0.40, 0.95))


def _background_colour(rng: np.random.Generator) -> RGB:
    # Hues 108-306 degrees: mixing any two of them in RGB never lands on an orange skin tone.
    return _hsv_rgb(rng.uniform(0.30, 0.85), rng.uniform(0.35, 0.90), rng.uniform(0.25, 0.95))


def draw_background(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A smooth random colour field: an upsampled coarse grid plus a few blurred blobs.

    Only low frequencies vary, which is what perceptual hashes look at, so two backgrounds
    hash far apart. Also used alone for "no face" images.
    """
    width, height = size
    grid_h, grid_w = (int(n) for n in rng.integers(2, 5, size=2))
    grid = np.array([_background_colour(rng) for _ in range(grid_h * grid_w)], dtype=np.uint8)
    image = Image.fromarray(grid.reshape(grid_h, grid_w, 3)).resize(size, Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    short = min(width, height)
    for _ in range(int(rng.integers(2, 5))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        radius = rng.uniform(0.15, 0.4) * short
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius],
                     fill=_background_colour(rng))
    return image.filter(ImageFilter.GaussianBlur(short / 20))


def _at(box: Box, u: float, v: float) -> Point:
    x, y, w, h = box
    return x + u * w, y + v * h


def _darker(colour: RGB, factor: float) -> RGB:
    r, g, b = colour
    return round(r * factor), round(g * factor), round(b * factor)


def _draw_eyes(draw: ImageDraw.ImageDraw, rng: np.random.Generator, box: Box) -> None:
    iris = _hsv_rgb(rng.uniform(0.0, 1.0), rng.uniform(0.3, 0.8), rng.uniform(0.05, 0.25))
    iris_scale = rng.uniform(0.45, 0.7)
    brow = _hsv_rgb(rng.uniform(0.05, 0.12), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.35))
    brow_width = max(2, box[3] // 30)
    for u in _EYE_U:
        left, top = _at(box, u - _EYE_RU, _EYE_V - _EYE_RV)
        right, bottom = _at(box, u + _EYE_RU, _EYE_V + _EYE_RV)
        draw.ellipse([left, top, right, bottom], fill=(245, 245, 240))
        iris_left, iris_top = _at(box, u - _EYE_RV * iris_scale * 1.4, _EYE_V - _EYE_RV * 0.95)
        iris_right, iris_bottom = _at(box, u + _EYE_RV * iris_scale * 1.4, _EYE_V + _EYE_RV * 0.95)
        draw.ellipse([iris_left, iris_top, iris_right, iris_bottom], fill=iris)
        tilt = rng.uniform(-0.02, 0.02)
        draw.line([_at(box, u - 0.1, _BROW_V + tilt), _at(box, u + 0.1, _BROW_V - tilt)],
                  fill=brow, width=brow_width)


def _mouth_points(box: Box, curvature: float) -> list[Point]:
    # A parabola through both corners; positive curvature lowers the middle (a smile).
    us = np.linspace(0.5 - _MOUTH_HALF, 0.5 + _MOUTH_HALF, 9)
    return [_at(box, u, _MOUTH_V + curvature * (1 - ((u - 0.5) / _MOUTH_HALF) ** 2)) for u in us]


def draw_face(rng: np.random.Generator, size: tuple[int, int], box: Box,
              skin: RGB | None = None) -> Image.Image:
    """An RGB picture of `size` (w, h) with a face-like drawing filling `box` (x, y, w, h).

    The box centre pixel is exactly `skin` (random when None); hair may reach a little
    outside the box, as in real face boxes that stop at the forehead.
    """
    skin = random_skin(rng) if skin is None else skin
    image = draw_background(rng, size)
    draw = ImageDraw.Draw(image)
    hair = _hsv_rgb(rng.uniform(0.02, 0.12), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.5))
    draw.ellipse([*_at(box, -0.06, -0.10), *_at(box, 1.06, 0.62)], fill=hair)
    x, y, w, h = box
    draw.ellipse([x, y, x + w - 1, y + h - 1], fill=skin)
    _draw_eyes(draw, rng, box)
    draw.ellipse([*_at(box, 0.45, _NOSE_TOP), *_at(box, 0.55, _NOSE_TIP)], fill=_darker(skin, 0.8))
    lips = _hsv_rgb(rng.uniform(0.95, 1.0), rng.uniform(0.4, 0.7), rng.uniform(0.35, 0.6))
    draw.line(_mouth_points(box, rng.uniform(-0.06, 0.06)), fill=lips,
              width=max(2, h // 25), joint="curve")
    return image


def face_jpeg(rng: np.random.Generator, size: tuple[int, int], box: Box,
              skin: RGB | None = None, quality: int = 90) -> bytes:
    """`draw_face` encoded as JPEG bytes, the form every raw layout stores."""
    return jpeg_bytes(draw_face(rng, size, box, skin), quality)


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    """Encode an image as JPEG; deterministic for identical pixels and quality."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def landmarks_5(box: Box) -> list[Point]:
    """CelebA's five points for a face drawn in `box`: eyes, nose tip, mouth corners.

    Eyes are listed image-left first, as CelebA's lefteye has the smaller x.
    """
    return [_at(box, _EYE_U[0], _EYE_V), _at(box, _EYE_U[1], _EYE_V),
            _at(box, 0.5, _NOSE_TIP - 0.01),
            _at(box, 0.5 - _MOUTH_HALF, _MOUTH_V), _at(box, 0.5 + _MOUTH_HALF, _MOUTH_V)]


def _ring(box: Box, cu: float, cv: float, ru: float, rv: float, n: int) -> list[Point]:
    angles = np.linspace(np.pi, -np.pi, n, endpoint=False)
    return [_at(box, cu + ru * np.cos(a), cv + rv * np.sin(a)) for a in angles]


def landmarks_68(box: Box) -> list[Point]:
    """The 68 iBUG points (jaw, brows, nose, eyes, mouth) for a face drawn in `box`.

    Ordered as in the iBUG 300-W scheme AffectNet uses, so converters that pick points by
    index (e.g. eye corners 36 and 45) find them where the drawing has them.
    """
    jaw_angles = np.linspace(np.pi * 0.97, np.pi * 0.03, 17)
    jaw = [_at(box, 0.5 + 0.49 * np.cos(a), 0.5 + 0.49 * np.sin(a)) for a in jaw_angles]
    brows = [_at(box, u + d, _BROW_V) for u in _EYE_U for d in np.linspace(-0.1, 0.1, 5)]
    bridge = [_at(box, 0.5, v) for v in np.linspace(_NOSE_TOP - 0.16, _NOSE_TOP + 0.06, 4)]
    nostrils = [_at(box, u, _NOSE_TIP - 0.01) for u in np.linspace(0.44, 0.56, 5)]
    eyes = [p for u in _EYE_U for p in _ring(box, u, _EYE_V, _EYE_RU, _EYE_RV, 6)]
    outer_mouth = _ring(box, 0.5, _MOUTH_V, _MOUTH_HALF, 0.04, 12)
    inner_mouth = _ring(box, 0.5, _MOUTH_V, _MOUTH_HALF * 0.7, 0.015, 8)
    return jaw + brows + bridge + nostrils + eyes + outer_mouth + inner_mouth
