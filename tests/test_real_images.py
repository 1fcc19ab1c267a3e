"""Images as cameras and tools write them, through a converter: EXIF orientation and every PIL
pixel mode become the upright 8-bit RGB a viewer shows (shared.pixels), or a reject with the
reason. docs/faults.md names these tests."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from shared.pixels import BACKGROUND, UnsupportedPixels, open_rgb, to_rgb8
from shared.shards.sources import SOURCES
from shared.shards.writer import build_shards
from shared.synthetic import face_jpeg
from conftest import SMALL
from shard_utils import read_samples

RAMP = np.tile((np.arange(128) * 2).astype(np.uint8), (128, 1))  # mean 127.0, 0..254 left to right


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **kw)
    return out.getvalue()


def ramp_files() -> dict[str, bytes]:
    """The same ramp in the pixel formats public datasets ship."""
    gray = Image.fromarray(RAMP, "L")
    opaque = Image.new("L", gray.size, 255)
    half = Image.new("L", gray.size, 128)
    palette = gray.quantize(256)
    keyed = Image.fromarray((np.arange(128) >= 64).astype(np.uint8)[None].repeat(128, 0), "P")
    keyed.putpalette([200, 200, 200, 255, 255, 255])  # left half grey 200, right half index 1: transparent
    return {
        "gray8.png": encoded(gray, "PNG"),
        "gray16.png": encoded(Image.fromarray(RAMP.astype(np.uint16) * 257), "PNG"),  # mode I;16
        "gray32_int.tif": encoded(Image.fromarray(RAMP.astype(np.int32) * 257, "I"), "TIFF"),  # mode I
        "unit_float.tif": encoded(Image.fromarray(RAMP.astype(np.float32) / 255, "F"), "TIFF"),
        "palette.png": encoded(palette, "PNG"),
        "palette_keyed.png": encoded(keyed, "PNG", transparency=1),
        "la.png": encoded(Image.merge("LA", [gray, opaque]), "PNG"),
        "rgba_half.png": encoded(Image.merge("RGBA", [gray, gray, gray, half]), "PNG"),
        "cmyk.jpg": encoded(gray.convert("RGB").convert("CMYK"), "JPEG", quality=95),
        "float_0_255.tif": encoded(Image.fromarray(RAMP.astype(np.float32), "F"), "TIFF"),  # no defined range
    }


def upright_and_turned(rng) -> dict[str, bytes]:
    """A face photo stored upright, and stored turned with the EXIF orientation that shows it
    upright again (6: turn right, 3: half turn, 8: turn left), as phone cameras write them."""
    upright = np.asarray(Image.open(io.BytesIO(face_jpeg(rng, (160, 120), (50, 20, 56, 70)))))
    files = {"upright.jpg": encoded(Image.fromarray(upright), "JPEG", quality=95)}
    for orientation, turns in ((6, 1), (3, 2), (8, 3)):
        exif = Image.Exif()
        exif[0x0112] = orientation
        stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright, turns)))
        files[f"exif{orientation}.jpg"] = encoded(stored, "JPEG", quality=95, exif=exif.tobytes())
    return files


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """An AffectNet folder listing every file above in training.csv (the ramps with a NaN box:
    the whole image; the photos with a box in the displayed picture's pixels), converted."""
    root = tmp_path_factory.mktemp("pixels")
    rows = []
    files = {**ramp_files(), **upright_and_turned(np.random.default_rng(3))}
    for name, data in files.items():
        (root / "Manually_Annotated_Images" / "1").mkdir(parents=True, exist_ok=True)
        (root / "Manually_Annotated_Images" / "1" / name).write_bytes(data)
        box = "NaN,NaN,NaN,NaN" if name.endswith(("png", "tif")) or name.startswith("cmyk") else "40,10,76,90"
        rows.append(f"1/{name},{box},,0,0.1,0.2")
    (root / "Manually_Annotated_file_lists").mkdir()
    (root / "Manually_Annotated_file_lists" / "training.csv").write_text("\n".join(rows) + "\n")
    (root / "Manually_Annotated_Images" / "1" / "val.png").write_bytes(files["gray8.png"])
    (root / "Manually_Annotated_file_lists" / "validation.csv").write_text("1/val.png,NaN,NaN,NaN,NaN,,0,0,0\n")
    manifest = build_shards(SOURCES["affectnet"].scan(root), root / "shards", SMALL, workers=1, progress=False)
    samples = {s["meta"]["path"].removeprefix("1/"): s for s in read_samples(root / "shards").values()
               if s["meta"]["split"] == "train"}
    return manifest, samples, (root / "shards" / "rejects.csv").read_text()


def crop(sample) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(sample["jpg"])).convert("RGB")).astype(float)


def test_a_16_bit_png_gives_the_crop_of_the_8_bit_one(converted):
    """The issue's input: a 16-bit grayscale PNG (mode I;16) was stored mostly white (PIL clips
    it to 255); scaled by 1/257 it is the 8-bit ramp (mean 127). Siblings: 32-bit integer (I)
    and unit float (F) TIFFs, palette, LA, CMYK JPEG."""
    _, samples, _ = converted
    reference = crop(samples["gray8.png"])
    assert reference.mean() == pytest.approx(127.0, abs=1.0)
    for name in ("gray16.png", "gray32_int.tif", "unit_float.tif", "palette.png", "la.png", "cmyk.jpg"):
        assert np.abs(crop(samples[name]) - reference).mean() < 1.5, name
        assert np.ptp(crop(samples[name]).reshape(-1, 3), axis=1).max() <= 2, name  # still gray


def test_transparency_is_composited_on_the_stated_background(converted):
    _, samples, _ = converted
    half = crop(samples["rgba_half.png"])
    assert BACKGROUND == (0, 0, 0)
    assert half.mean() == pytest.approx(127.0 * 128 / 255, abs=1.5)  # half the ramp over black
    keyed = crop(samples["palette_keyed.png"])
    assert keyed[:, :28].mean() == pytest.approx(200, abs=2) and keyed[:, 36:].max() < 8  # the keyed colour: black


def test_a_float_image_without_a_defined_range_is_a_reject_with_its_reason(converted):
    manifest, samples, rejects = converted
    assert "float_0_255.tif" not in samples
    assert manifest["rejects"]["counts"] == {"unsupported-pixels": 1}
    assert '1/float_0_255.tif,train,unsupported-pixels,"mode F (float) with values 0..254:' in rejects


@pytest.mark.parametrize("orientation", [6, 3, 8])
def test_exif_orientation_is_applied_before_the_box(converted, orientation):
    """A photo stored turned, with the EXIF tag that turns it back: the crop is the upright
    photo's (the box is in the displayed picture's pixels), and orig_size is the displayed size."""
    _, samples, _ = converted
    turned, upright = samples[f"exif{orientation}.jpg"], samples["upright.jpg"]
    assert turned["meta"]["orig_size"] == upright["meta"]["orig_size"] == [160, 120]
    assert turned["meta"]["crop_box"] == upright["meta"]["crop_box"]
    assert np.abs(crop(turned) - crop(upright)).mean() < 4
    assert np.abs(np.rot90(crop(turned)) - crop(upright)).mean() > 20  # the turn is visible at all


def test_every_mode_becomes_8_bit_rgb_or_a_reason():
    """Straight through the one function, the modes a converter may meet."""
    for mode in ("1", "L", "P", "RGB", "RGBA", "RGBa", "LA", "La", "PA", "CMYK", "YCbCr", "LAB", "HSV", "I;16",
                 "I;16B", "I", "F", "RGBX"):
        img = Image.new(mode, (4, 3))
        out = to_rgb8(img)
        assert out.mode == "RGB" and out.size == (4, 3), mode
    with pytest.raises(UnsupportedPixels, match="16-bit range"):
        to_rgb8(Image.fromarray(np.full((2, 2), 70000, np.int32), "I"))
    with pytest.raises(UnsupportedPixels, match=r"only floats in \[0, 1\]"):
        to_rgb8(Image.fromarray(np.full((2, 2), np.nan, np.float32), "F"))
    assert np.asarray(open_rgb(encoded(Image.fromarray(np.full((2, 2), 65535, np.uint16)), "PNG"))).min() == 255
