"""The one way an image file becomes pixels: upright, 8-bit RGB, as a viewer shows it.

Face datasets are scraped from the web and from cameras, so their files come in every form PIL
opens: JPEGs whose EXIF orientation says "rotate me", 16-bit grayscale PNGs, palette images,
transparent PNGs, CMYK JPEGs from print workflows, 1-bit scans. `upright_rgb` turns any of them
into the RGB picture a viewer displays, or raises `UnsupportedPixels` with the reason (a
converter lists it in rejects.csv as `unsupported-pixels`); it never clips or guesses silently.

- orientation: the EXIF Orientation tag is applied (rotation and mirroring);
- 16-bit (I;16*, and mode I with values in 0..65535): scaled by 1/257 with rounding, so the
  full 16-bit range maps to the full 8-bit range (PIL's own convert clips everything above 255
  to white);
- float (F): values in [0, 1] scaled by 255; any other range has no defined meaning: rejected;
- alpha (RGBA, LA, PA, P with transparency, premultiplied modes): composited on BACKGROUND,
  black, the colour a face crop is padded with beyond the image's edges;
- CMYK: through its embedded ICC profile (ImageCms) when it has one, else PIL's conversion
  (which already undoes Adobe's inverted CMYK JPEGs);
- 1, L, P, RGBX, YCbCr and other modes PIL converts: PIL's conversion.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

BACKGROUND = (0, 0, 0)
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")
_SWAPS_AXES = (5, 6, 7, 8)  # EXIF orientations that rotate by 90 or 270 degrees


class UnsupportedPixels(ValueError):
    """An image whose pixels have no defined 8-bit RGB meaning; the message says why."""


def open_rgb(data: bytes | str | Path) -> Image.Image:
    """Image bytes or a file path -> upright 8-bit RGB PIL image (see the module docstring).
    Raises UnsupportedPixels, or PIL's own errors for a file it cannot decode."""
    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    with Image.open(source) as img:
        return upright_rgb(img)


def display_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as displayed: swapped when the EXIF orientation turns the picture."""
    w, h = img.size
    return (h, w) if orientation(img) in _SWAPS_AXES else (w, h)


def orientation(img: Image.Image) -> int:
    """The EXIF Orientation tag (1 = upright; 1 also when absent or unreadable)."""
    try:
        return int(img.getexif().get(ImageOps.ExifTags.Base.Orientation, 1) or 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block leaves the pixels as stored
        return 1


def upright_rgb(img: Image.Image) -> Image.Image:
    """An opened image -> its upright 8-bit RGB pixels (decoded now)."""
    if orientation(img) != 1:
        img = ImageOps.exif_transpose(img)
    return to_rgb8(img)


def to_rgb8(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB, by the rules of the module docstring."""
    img.load()  # decode now: the caller may close the file next
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in _SIXTEEN_BIT or mode == "I":
        return _gray(_sixteen_bit(np.asarray(img), mode))
    if mode == "F":
        return _gray(_unit_float(np.asarray(img, dtype=np.float64)))
    if mode in _ALPHA or "transparency" in img.info:
        try:  # premultiplied La has no direct path to RGBA in PIL: through LA
            rgba = (img.convert("LA") if mode == "La" else img).convert("RGBA")
        except ValueError as err:
            raise UnsupportedPixels(f"mode {mode}: no conversion to RGBA ({err})") from None
        return Image.alpha_composite(Image.new("RGBA", img.size, (*BACKGROUND, 255)), rgba).convert("RGB")
    if mode == "CMYK" and img.info.get("icc_profile"):
        return _cmyk_with_profile(img)
    try:
        return img.convert("RGB")
    except ValueError as err:  # a mode PIL cannot turn into RGB (LAB, ...)
        raise UnsupportedPixels(f"mode {mode}: no conversion to RGB ({err})") from None


def _gray(values: np.ndarray) -> Image.Image:
    return Image.fromarray(values.astype(np.uint8), "L").convert("RGB")


def _sixteen_bit(values: np.ndarray, mode: str) -> np.ndarray:
    values = values.astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise UnsupportedPixels(f"mode {mode} with values {values.min()}..{values.max()}, outside the "
                                "16-bit range 0..65535: no defined 8-bit meaning")
    return (values + 128) // 257  # round(v / 257): 0 -> 0, 65535 -> 255


def _unit_float(values: np.ndarray) -> np.ndarray:
    if not np.isfinite(values).all() or (values.size and (values.min() < 0 or values.max() > 1)):
        raise UnsupportedPixels(f"mode F (float) with values {np.nanmin(values):.4g}..{np.nanmax(values):.4g}: "
                                "only floats in [0, 1] have a defined 8-bit meaning")
    return np.rint(values * 255)


def _cmyk_with_profile(img: Image.Image) -> Image.Image:
    from PIL import ImageCms
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(img.info["icc_profile"]))
        return ImageCms.profileToProfile(img, profile, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except (ImageCms.PyCMSError, OSError):  # a damaged profile: PIL's plain conversion
        return img.convert("RGB")
