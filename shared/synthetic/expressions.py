"""Drawn faces whose facial expression is visible, for built-in demo data.

`faces.py` draws flat faces with checkable pixels for converter tests; this module draws faces
meant to be *recognised*: shaded skin, hair, neck, almond eyes with iris, pupil and lashes,
shaped brows, a nose with nostrils, and two-lipped mouths that open. What a reader can check:

- an expression is a vector of ten geometric parameters (`PARAMS`: mouth corner lift, opening,
  width, asymmetry, upper-lip raise, brow height, inner-brow lift, brow squeeze, eye openness,
  nose wrinkle); each of the 8 AffectNet classes is one target vector (`TARGETS`) and
  `expression_params(code, intensity)` scales it, so intensity 0 is the neutral face of every
  class and blends of classes are plain weighted sums (`blend`);
- the class is carried by the drawing only: skin tone, hair, face proportions, size,
  position, rotation, background and JPEG quality are drawn at random per face (`random_look`),
  independently of the class;
- the 68 iBUG landmarks returned with every face are the drawn geometry (after rotation);
- faces are found by face detectors (MTCNN, Haar): the built-in data tests check it.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from shared.synthetic.faces import Box, jpeg_bytes, random_skin

CLASS_NAMES = ("Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt")
PARAMS = ("mouth_curve", "mouth_open", "mouth_width", "mouth_tilt", "upper_lip", "brow_raise",
          "brow_inner", "brow_squeeze", "eye_open", "nose_wrinkle")

# One row per class, columns in PARAMS order, at full intensity. Lengths are fractions of the
# face box; mouth_width and eye_open are relative changes. The rows follow the facial action
# units of each prototype expression: Happy lifts the mouth corners and narrows the eyes
# (AU6+12), Sad lifts the inner brows and lowers the corners (AU1+15), Surprise raises the brows,
# widens the eyes and drops the jaw (AU1+2+5+26), Fear adds brow squeeze and a stretched mouth
# (AU1+2+4+5+20), Disgust wrinkles the nose and raises the upper lip (AU9+10), Anger lowers and
# draws the brows together and presses the lips (AU4+23), Contempt lifts one corner (AU14).
TARGETS = np.array([
    # curve  open   width  tilt   upper  raise  inner  squeeze eye   wrinkle
    [0.000, 0.000, 0.00, 0.000, 0.000, 0.000, 0.000, 0.000, 0.00, 0.0],   # Neutral
    [0.065, 0.045, 0.22, 0.000, 0.000, 0.005, 0.000, 0.000, -0.35, 0.0],  # Happy
    [-0.060, 0.000, -0.08, 0.000, 0.000, -0.005, 0.060, 0.015, -0.30, 0.0],  # Sad
    [0.000, 0.140, -0.42, 0.000, 0.000, 0.060, 0.010, 0.000, 0.65, 0.0],  # Surprise
    [-0.020, 0.055, 0.22, 0.000, 0.000, 0.035, 0.045, 0.030, 0.60, 0.0],  # Fear
    [-0.030, 0.018, -0.06, 0.010, 0.025, -0.015, -0.020, 0.020, -0.45, 1.0],  # Disgust
    [-0.018, 0.000, -0.15, 0.000, 0.000, -0.025, -0.055, 0.040, -0.10, 0.3],  # Anger
    [0.000, 0.000, -0.03, 0.095, 0.000, 0.000, 0.000, 0.000, -0.15, 0.0],  # Contempt
])

# Neutral feature positions (u right, v down, fractions of the face box).
_EYE_U, _EYE_V, _EYE_RU = 0.31, 0.43, 0.095
_BROW_V = 0.335
_MOUTH_V, _MOUTH_HALF = 0.765, 0.155
_NOSE_V = 0.63
_SUPERSAMPLE = 2  # features are drawn at twice the size, then downsampled: smooth edges


def expression_params(code: int, intensity: float = 1.0) -> np.ndarray:
    """The parameter vector (len(PARAMS),) of class `code` (0-7) at `intensity` in [0, 1]."""
    return TARGETS[code] * float(np.clip(intensity, 0.0, 1.0))


def blend(weights) -> np.ndarray:
    """A mixed expression: `weights` (8,) per class, each an intensity; a weighted sum of rows."""
    return np.asarray(weights, dtype=float) @ TARGETS


def _hsv_rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    return tuple(round(c * 255) for c in colorsys.hsv_to_rgb(h, s, v))


@dataclass(frozen=True)
class Look:
    """Who the face is, independently of what it expresses: colours and proportions."""

    skin: tuple[int, int, int]
    hair: tuple[int, int, int]
    iris: tuple[int, int, int]
    lips: tuple[int, int, int]
    eye_dx: float      # eye spacing offset
    eye_dv: float      # eye height offset
    mouth_dv: float    # mouth height offset
    mouth_scale: float
    brow_width: float  # brow thickness, fraction of the face box
    hairline: float    # where the hair stops on the forehead (v)


def random_look(rng: np.random.Generator) -> Look:
    """A random identity: skin, hair, eye and lip colours and small proportion changes."""
    skin = random_skin(rng)
    # hair at most 60 % as bright as the skin: a head outline detectors can see on dark skin
    skin_value = max(skin) / 255
    hair_value = min(rng.uniform(0.05, 0.45), 0.6 * skin_value)
    return Look(skin=skin,
                hair=_hsv_rgb(rng.uniform(0.02, 0.12), rng.uniform(0.2, 0.8), hair_value),
                iris=_hsv_rgb(rng.uniform(0.05, 0.6), rng.uniform(0.3, 0.8), rng.uniform(0.15, 0.45)),
                lips=_hsv_rgb(rng.uniform(0.96, 1.0), rng.uniform(0.35, 0.6), rng.uniform(0.45, 0.75)),
                eye_dx=rng.uniform(-0.02, 0.02), eye_dv=rng.uniform(-0.02, 0.02),
                mouth_dv=rng.uniform(-0.02, 0.02), mouth_scale=rng.uniform(0.92, 1.08),
                brow_width=rng.uniform(0.022, 0.034), hairline=rng.uniform(0.08, 0.2))


@dataclass
class _Geometry:
    """Every drawn outline, in face-box units (u, v)."""

    eyes: list[tuple[np.ndarray, np.ndarray]]  # per eye: upper lid (n, 2), lower lid (n, 2)
    irises: list[tuple[float, float, float]]   # centre u, v and radius
    brows: list[np.ndarray]                    # per brow: 5 points, outer to inner
    mouth_outer_up: np.ndarray
    mouth_outer_low: np.ndarray
    mouth_inner_up: np.ndarray
    mouth_inner_low: np.ndarray


def _geometry(p: np.ndarray, look: Look) -> _Geometry:
    curve, opening, width, tilt, upper, raise_, inner, squeeze, eye_open, _ = p
    openness = float(np.clip(1 + eye_open, 0.2, 2.0))
    t = np.linspace(0, np.pi, 9)
    eyes, irises, brows = [], [], []
    for side in (-1, 1):  # image left, image right
        eu, ev = 0.5 + side * (0.5 - _EYE_U + look.eye_dx), _EYE_V + look.eye_dv
        upper_lid = np.stack([eu - side * _EYE_RU * np.cos(t), ev - 0.05 * openness * np.sin(t)], 1)
        lower_lid = np.stack([eu - side * _EYE_RU * np.cos(t), ev + 0.032 * openness * np.sin(t)], 1)
        eyes.append((upper_lid, lower_lid))
        irises.append((eu, ev - 0.004 * openness, 0.042))
        # brow from outer to inner end; the inner end moves with inner-brow lift and squeeze
        outer = np.array([eu + side * 0.11, _BROW_V + look.eye_dv - raise_ + 0.01])
        inner_end = np.array([eu - side * (0.105 - squeeze), _BROW_V + look.eye_dv - raise_ - inner])
        s = np.linspace(0, 1, 5)[:, None]
        arch = 0.018 * np.sin(np.pi * s) * np.array([0.0, 1.0])
        brows.append(outer + (inner_end - outer) * s - arch)
    half = _MOUTH_HALF * look.mouth_scale * (1 + width)
    cv = _MOUTH_V + look.mouth_dv
    s = np.linspace(-1, 1, 13)
    # both corners lift with curve; tilt lifts the image-left corner alone (a smirk)
    lift = curve + tilt * (1 - s) / 2
    line = cv - lift * s ** 2
    bulge = np.sqrt(np.clip(1 - s ** 2, 0, 1))
    u = 0.5 + half * s
    inner_up = line - (upper + 0.35 * opening) * bulge
    inner_low = line + 0.65 * opening * bulge
    outer_up = inner_up - (0.02 + 0.01 * np.cos(np.pi * s) ** 2) * bulge - 0.004
    outer_low = inner_low + 0.032 * bulge + 0.002
    return _Geometry(eyes, irises, brows,
                     np.stack([u, outer_up], 1), np.stack([u, outer_low], 1),
                     np.stack([u, inner_up], 1), np.stack([u, inner_low], 1))


class _Canvas:
    """Maps face-box units to pixels of a supersampled layer holding the face and its margin."""

    def __init__(self, box: Box):
        x, y, w, h = box
        self.scale = _SUPERSAMPLE
        # the layer reaches 25 % beyond the box on each side, for hair and neck
        self.x0, self.y0 = x - 0.25 * w, y - 0.25 * h
        self.w, self.h = w, h
        self.size = (round(1.5 * w * self.scale), round(1.5 * h * self.scale))

    def px(self, points) -> list[tuple[float, float]]:
        pts = np.asarray(points, dtype=float).reshape(-1, 2)
        return [((0.25 + u) * self.w * self.scale, (0.25 + v) * self.h * self.scale) for u, v in pts]

    def length(self, fraction: float) -> float:
        return fraction * self.h * self.scale


def _shade(rgb: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(np.clip(c * factor, 0, 255)) for c in rgb)


def _draw_head(layer: Image.Image, c: _Canvas, look: Look) -> None:
    """Neck, hair behind the head, the skin oval with darker rim, ears, then the hair fringe."""
    draw = ImageDraw.Draw(layer)
    neck = _shade(look.skin, 0.78)
    draw.rectangle(c.px([(0.3, 0.8), (0.7, 1.25)]), fill=neck)
    draw.ellipse(c.px([(-0.06, -0.08), (1.06, 0.75)]), fill=look.hair)
    draw.ellipse(c.px([(-0.05, 0.38), (0.06, 0.62)]), fill=_shade(look.skin, 0.85))
    draw.ellipse(c.px([(0.94, 0.38), (1.05, 0.62)]), fill=_shade(look.skin, 0.85))
    # concentric ovals, darker outside: a cheap shading that gives the head volume
    for k, factor in enumerate((0.72, 0.84, 0.94, 1.0)):
        inset = 0.035 * k
        draw.ellipse(c.px([(inset, inset * 0.9), (1 - inset, 1 - inset * 0.6)]),
                     fill=_shade(look.skin, factor))
    # soft highlights where light falls (forehead, cheekbones, nose bridge), blurred at a
    # quarter of the resolution: they hold no detail, and blurring is the costly step
    colour = _shade(look.skin, 1.15)
    light = Image.new("RGBA", (layer.width // 4, layer.height // 4), (*colour, 0))
    glow = ImageDraw.Draw(light)
    quarter = [(0.3, 0.12, 0.7, 0.3), (0.13, 0.5, 0.31, 0.64), (0.69, 0.5, 0.87, 0.64),
               (0.47, 0.44, 0.53, 0.6)]
    for u0, v0, u1, v1 in quarter:
        glow.ellipse([v / 4 for v in np.ravel(c.px([(u0, v0), (u1, v1)]))], fill=(*colour, 255))
    light = light.filter(ImageFilter.GaussianBlur(c.length(0.03) / 4)).resize(layer.size, Image.BILINEAR)
    layer.alpha_composite(light)
    ImageDraw.Draw(layer).chord(c.px([(0.02, -0.02), (0.98, 2 * look.hairline + 0.1)]), 180, 360,
                                fill=look.hair)


def _draw_eye(draw: ImageDraw.ImageDraw, c: _Canvas, lids, iris, look: Look) -> None:
    """Socket shadow, sclera, iris and pupil hidden by the lids, lash line."""
    upper, lower = lids
    eu, ev, radius = iris
    socket = _shade(look.skin, 0.88)
    draw.ellipse(c.px([(eu - 0.12, ev - 0.075), (eu + 0.12, ev + 0.06)]), fill=socket)
    draw.polygon(c.px(np.concatenate([upper, lower[::-1]])), fill=(238, 236, 230))
    draw.ellipse(c.px([(eu - radius * 0.8, ev - radius), (eu + radius * 0.8, ev + radius)]), fill=look.iris)
    draw.ellipse(c.px([(eu - radius * 0.35, ev - radius * 0.45), (eu + radius * 0.35, ev + radius * 0.45)]),
                 fill=(12, 10, 10))
    # lids cover what of the iris lies outside them: socket-coloured bands above and below
    reach = radius * 1.2
    top = np.stack([upper[:, 0], np.minimum(upper[:, 1], ev - reach)], 1)
    bottom = np.stack([lower[:, 0], np.maximum(lower[:, 1], ev + reach)], 1)
    draw.polygon(c.px(np.concatenate([upper, top[::-1]])), fill=socket)
    draw.polygon(c.px(np.concatenate([lower, bottom[::-1]])), fill=socket)
    draw.line(c.px(upper), fill=(25, 20, 20), width=max(2, round(c.length(0.012))), joint="curve")
    draw.line(c.px(lower), fill=_shade(look.skin, 0.6), width=max(1, round(c.length(0.005))))


def _draw_nose(draw: ImageDraw.ImageDraw, c: _Canvas, look: Look, wrinkle: float,
               folds: tuple[float, float]) -> None:
    shadow = _shade(look.skin, 0.72)
    width = max(1, round(c.length(0.01)))
    draw.line(c.px([(0.465, 0.47), (0.455, 0.58), (0.44, _NOSE_V - 0.01)]), fill=_shade(look.skin, 0.85),
              width=width)
    draw.ellipse(c.px([(0.43, _NOSE_V - 0.035), (0.57, _NOSE_V + 0.015)]), fill=_shade(look.skin, 0.9))
    for side in (-1, 1):
        u = 0.5 + side * 0.04
        draw.ellipse(c.px([(u - 0.022, _NOSE_V - 0.008), (u + 0.022, _NOSE_V + 0.012)]), fill=shadow)
    if wrinkle > 0.05:  # horizontal creases over the bridge and between the brows
        crease = _shade(look.skin, 1 - 0.35 * min(wrinkle, 1.0))
        for v in (0.47, 0.5, 0.53):
            draw.arc(c.px([(0.44, v - 0.01), (0.56, v + 0.025)]), 200, 340, fill=crease,
                     width=max(1, round(c.length(0.008))))
    for side, fold in zip((-1, 1), folds):  # nasolabial folds deepen with smiles and sneers
        if fold > 0.05:
            tone = _shade(look.skin, 1 - 0.3 * min(fold, 1.0))
            draw.line(c.px([(0.5 + side * 0.08, _NOSE_V - 0.005), (0.5 + side * 0.14, 0.7),
                            (0.5 + side * 0.16, 0.78)]), fill=tone,
                      width=max(1, round(c.length(0.009))), joint="curve")


def _draw_mouth(draw: ImageDraw.ImageDraw, c: _Canvas, g: _Geometry, look: Look) -> None:
    draw.polygon(c.px(np.concatenate([g.mouth_outer_up, g.mouth_outer_low[::-1]])), fill=look.lips)
    gap = g.mouth_inner_low[:, 1] - g.mouth_inner_up[:, 1]
    if gap.max() > 0.006:
        inner = np.concatenate([g.mouth_inner_up, g.mouth_inner_low[::-1]])
        draw.polygon(c.px(inner), fill=(55, 18, 22))
        teeth_low = g.mouth_inner_up.copy()
        teeth_low[:, 1] += np.minimum(gap * 0.45, 0.025)
        draw.polygon(c.px(np.concatenate([g.mouth_inner_up[2:-2], teeth_low[2:-2][::-1]])),
                     fill=(232, 228, 215))
    draw.line(c.px(g.mouth_inner_up), fill=_shade(look.lips, 0.45), width=max(1, round(c.length(0.008))),
              joint="curve")


def draw_expression(image: Image.Image, box: Box, params: np.ndarray, look: Look,
                    rotation: float = 0.0) -> np.ndarray:
    """Draw a face with expression `params` into `box` (x, y, w, h) of `image`, in place.

    `rotation` (degrees, counter-clockwise) turns the face about the box centre. Returns the
    68 iBUG landmarks (68, 2) of the drawing, in image pixels.
    """
    params = np.asarray(params, dtype=float)
    g = _geometry(params, look)
    c = _Canvas(box)
    layer = Image.new("RGBA", c.size, (0, 0, 0, 0))
    _draw_head(layer, c, look)
    draw = ImageDraw.Draw(layer)
    for lids, iris in zip(g.eyes, g.irises):
        _draw_eye(draw, c, lids, iris, look)
    brow_colour = _shade(look.hair, 0.6)
    for brow in g.brows:
        draw.line(c.px(brow), fill=brow_colour, width=round(c.length(look.brow_width)), joint="curve")
    wrinkle = params[PARAMS.index("nose_wrinkle")]
    curve, tilt = params[PARAMS.index("mouth_curve")], params[PARAMS.index("mouth_tilt")]
    folds = (max(curve + tilt, 0) * 12 + wrinkle, max(curve, 0) * 12 + wrinkle)
    _draw_nose(draw, c, look, wrinkle, folds)
    _draw_mouth(draw, c, g, look)
    x, y, w, h = box
    centre = (0.75 * w, 0.75 * h)  # the box centre inside the layer
    layer = layer.reduce(c.scale)  # a box filter: anti-aliased edges, at little cost
    if rotation:
        layer = layer.rotate(rotation, resample=Image.BICUBIC, center=centre)
    image.paste(layer, (round(c.x0), round(c.y0)), layer)
    return _rotate(landmarks(g, box), (x + w / 2, y + h / 2), rotation)


def _rotate(points: np.ndarray, centre: tuple[float, float], degrees: float) -> np.ndarray:
    # PIL's rotate turns counter-clockwise on screen, i.e. clockwise in y-down maths
    a = np.deg2rad(degrees)
    rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    return (points - centre) @ rot.T + centre


def landmarks(g: _Geometry, box: Box) -> np.ndarray:
    """The 68 iBUG points (jaw, brows, nose, eyes, mouth) of a geometry, in image pixels."""
    x, y, w, h = box
    jaw_angles = np.linspace(np.pi * 0.97, np.pi * 0.03, 17)
    jaw = np.stack([0.5 + 0.49 * np.cos(jaw_angles), 0.5 + 0.49 * np.sin(jaw_angles)], 1)
    brows = np.concatenate([g.brows[0], g.brows[1][::-1]])  # iBUG runs left to right
    bridge = np.stack([np.full(4, 0.5), np.linspace(0.46, _NOSE_V - 0.02, 4)], 1)
    nostrils = np.stack([np.linspace(0.44, 0.56, 5), np.full(5, _NOSE_V + 0.005)], 1)
    eyes = []
    for upper, lower in g.eyes:
        ring = np.concatenate([upper[[0, 3, 5]], lower[[8, 5, 3]]])
        eyes.append(ring if ring[0, 0] < ring[1, 0] else ring[[1, 0, 2, 3, 4, 5]])
    outer = np.concatenate([g.mouth_outer_up[[0, 2, 4, 6, 8, 10, 12]], g.mouth_outer_low[[10, 8, 6, 4, 2]]])
    inner = np.concatenate([g.mouth_inner_up[[1, 4, 6, 8, 11]], g.mouth_inner_low[[8, 6, 4]]])
    points = np.concatenate([jaw, brows, bridge, nostrils, *eyes, outer, inner])
    return points * (w, h) + (x, y)


def background(rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """A smooth random colour field (green to purple hues, never skin-like) with soft blobs,
    drawn and blurred at an eighth of the size, then upsampled: only low frequencies vary."""
    width, height = size
    small = (max(4, width // 8), max(4, height // 8))
    grid = rng.uniform(0, 1, size=(int(rng.integers(2, 5)), int(rng.integers(2, 5)), 3))
    hues, sats, values = rng.uniform(0.30, 0.85, grid.shape[:2]), grid[..., 1], grid[..., 2]
    colours = [_hsv_rgb(h, 0.35 + 0.55 * s, 0.25 + 0.7 * v)
               for h, s, v in zip(hues.ravel(), sats.ravel(), values.ravel())]
    cells = np.array(colours, dtype=np.uint8).reshape(*grid.shape[:2], 3)
    image = Image.fromarray(cells).resize(small, Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 5))):
        cx, cy = rng.uniform(0, small[0]), rng.uniform(0, small[1])
        radius = rng.uniform(0.15, 0.4) * min(small)
        colour = _hsv_rgb(rng.uniform(0.30, 0.85), rng.uniform(0.35, 0.9), rng.uniform(0.25, 0.95))
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=colour)
    return image.filter(ImageFilter.GaussianBlur(min(small) / 20)).resize(size, Image.BICUBIC)


@dataclass(frozen=True)
class Framing:
    """Where a face goes in its picture and how the picture is stored."""

    size: tuple[int, int]
    box: Box
    rotation: float
    quality: int


def random_framing(rng: np.random.Generator, size: tuple[int, int] | None = None,
                   face_fraction: tuple[float, float] = (0.45, 0.65)) -> Framing:
    """A random picture size (unless given), face box inside it, rotation and JPEG quality."""
    if size is None:
        size = (int(rng.integers(160, 240)), int(rng.integers(170, 250)))
    width, height = size
    face_h = int(rng.uniform(*face_fraction) * min(width, height) * 1.15)
    face_w = int(face_h * rng.uniform(0.76, 0.86))
    # keep 25 % of the box free around it, where hair and neck are drawn
    margin_x, margin_y = face_w // 4, face_h // 8
    x = int(rng.integers(margin_x, max(margin_x + 1, width - face_w - margin_x)))
    y = int(rng.integers(margin_y, max(margin_y + 1, height - face_h)))
    return Framing(size, (x, y, face_w, face_h), float(rng.uniform(-8, 8)), int(rng.integers(60, 96)))


def expression_image(rng: np.random.Generator, code: int, intensity: float, *,
                     framing: Framing | None = None, look: Look | None = None,
                     jitter: float = 0.1) -> tuple[Image.Image, np.ndarray, Framing]:
    """A picture of class `code` at `intensity` on a random background.

    `jitter` adds per-face noise to the expression (a fraction of each parameter's largest
    target), as no two people smile alike. Returns the image, its 68 landmarks and framing.
    """
    framing = random_framing(rng) if framing is None else framing
    look = random_look(rng) if look is None else look
    scale = np.abs(TARGETS).max(0)
    params = expression_params(code, intensity) + rng.normal(0, jitter, len(PARAMS)) * scale
    image = background(rng, framing.size)
    points = draw_expression(image, framing.box, params, look, framing.rotation)
    return image, points, framing


def expression_jpeg(rng: np.random.Generator, code: int, intensity: float,
                    **kwargs) -> tuple[bytes, np.ndarray, Framing]:
    """`expression_image` encoded at the framing's JPEG quality."""
    image, points, framing = expression_image(rng, code, intensity, **kwargs)
    return jpeg_bytes(image, framing.quality), points, framing
