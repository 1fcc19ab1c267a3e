"""Small Hugging Face image datasets with planted faults, built offline with `datasets` itself."""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

NAMES = ["angry", "happy", "neutral", "contempt"]  # a FER-style ClassLabel; contempt left out of the map
LABEL_MAP = "angry=anger,HAPPY=happy,neutral=0"  # names and a code, case-insensitive
CODES = {"angry": 6, "happy": 1, "neutral": 0}
RED, BLUE, YELLOW = (220, 20, 20), (20, 20, 220), (250, 250, 0)


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kw)
    return out.getvalue()


def flat(colour, size=(48, 40)) -> Image.Image:
    return Image.new("RGB", size, colour)


def exif_rotated() -> bytes:
    """Stored 60x40, left half red, right half blue, EXIF orientation 6: a viewer shows it 40x60
    with red on top."""
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, :30], pixels[:, 30:] = RED, BLUE
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(Image.fromarray(pixels), "JPEG", quality=95, exif=exif)


def boxed() -> bytes:
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[8:24, 8:24] = YELLOW
    return encoded(Image.fromarray(pixels), "PNG")


def textured(seed: int, size: int = 64) -> Image.Image:
    """A smooth random picture: distinct perceptual hashes, unlike flat colours."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)


@dataclass
class Row:
    image: bytes | None
    label: str | int | None  # a ClassLabel name, None (null) or -1 (ClassLabel's missing)
    box: list[float] | None = None
    reject: str | None = None  # the reason expected in rejects.csv
    centre: tuple[int, int, int] | None = None  # expected colour at the crop's centre
    extra: dict = field(default_factory=dict)

    @property
    def expression(self):
        return CODES.get(self.label) if isinstance(self.label, str) else None


def planted_rows() -> dict[str, list[Row]]:
    """Every kind of image and label the other converters meet, one row each."""
    cmyk = Image.new("CMYK", (48, 40), (0, 255, 255, 0))  # PIL shows it red
    sixteen = Image.fromarray(np.full((40, 48), 257 * 200, np.uint16))  # I;16, 200 in 8 bits
    palette = flat((20, 160, 40)).quantize(colors=4)
    train = [
        Row(encoded(flat(RED), "JPEG", quality=95), "angry", centre=RED),
        Row(encoded(Image.new("L", (48, 40), 90), "PNG"), "happy", centre=(90, 90, 90)),
        Row(b"\x89PNG but not an image", "happy", reject="unreadable-image"),
        Row(encoded(sixteen, "PNG"), "neutral", centre=(200, 200, 200)),
        Row(encoded(palette, "PNG"), "happy", centre=(20, 160, 40)),
        Row(encoded(cmyk, "JPEG", quality=95), "angry", centre=(255, 0, 0)),
        Row(exif_rotated(), "happy", extra={"orig_size": [40, 60]}),
        Row(encoded(flat(BLUE), "JPEG", quality=95), None, centre=BLUE),
        Row(encoded(flat(BLUE), "PNG"), "contempt", centre=BLUE),
        Row(None, "angry", reject="missing-image"),
        Row(boxed(), "neutral", box=[8, 8, 16, 16], centre=YELLOW, extra={"crop_box": [4.8, 4.8, 27.2, 27.2]}),
        Row(boxed(), "neutral", box=[8, 8], reject="bad-row"),
    ]
    test = [Row(encoded(flat(RED), "PNG"), "happy", centre=RED), Row(encoded(flat(BLUE), "PNG"), -1, centre=BLUE)]
    return {"train": train, "test": test}


def hf_split(rows: list[Row]):
    from datasets import ClassLabel, Dataset, Features, Image as HFImage, Sequence, Value

    features = Features({"image": HFImage(), "label": ClassLabel(names=NAMES), "box": Sequence(Value("float32"))})
    return Dataset.from_dict({
        "image": [None if r.image is None else {"bytes": r.image, "path": None} for r in rows],
        "label": [NAMES.index(r.label) if isinstance(r.label, str) else r.label for r in rows],
        "box": [r.box for r in rows],
    }, features=features)


def write_saved(folder: Path, splits: dict[str, list[Row]]) -> Path:
    """A DatasetDict written with save_to_disk."""
    from datasets import DatasetDict

    DatasetDict({name: hf_split(rows) for name, rows in splits.items()}).save_to_disk(str(folder))
    return folder


def write_parquet(path: Path, rows: list[Row]) -> Path:
    """One split as parquet, written by datasets (its features kept in the file's metadata)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    hf_split(rows).to_parquet(str(path))
    return path


def write_plain_parquet(path: Path, images: list[bytes], labels: list[str | None], valence: list[float]) -> Path:
    """Parquet as other tools write it: raw image bytes, text labels, no datasets metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"img_bytes": pa.array(images, pa.binary()), "emotion": pa.array(labels, pa.string()),
                             "valence": pa.array(valence, pa.float64())}), path)
    return path
