"""What every raw-layout writer shares: the `Planted` record and small drawing helpers."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shared.synthetic.faces import Box

REJECT_REASONS = ("no-face", "bad-row", "missing-image", "unreadable-image", "filtered")


@dataclass
class Planted:
    """Exactly what a writer put on disk, so a converter test can compute its expectations.

    - `root`: the directory handed to the writer (what a converter is pointed at).
    - `image_dir`: the directory the keys of `rejects` and `faces` are relative to; keys are
      written the way the dataset's own listing names the image (AffectNet's
      subDirectory_filePath, CelebA's image_id, ...). RecordIO keys are `train.rec#<key>`.
    - `rows`: per split, entries listed by the list files (images found, for folder layouts),
      rejected ones included.
    - `expected`: per split, images a correct converter writes.
    - `rejects`: reason -> keys a correct converter rejects; only reasons that occur appear.
    - `faces`: key -> {"box", "skin", "split", label fields} for every image a correct
      converter writes (never for rejects). "box" is (x, y, w, h) in image pixels, or None
      where the converter should use the whole image; the face is then centred in it.
    """

    root: Path
    image_dir: Path
    rows: dict[str, int] = field(default_factory=dict)
    expected: dict[str, int] = field(default_factory=dict)
    rejects: dict[str, list[str]] = field(default_factory=dict)
    faces: dict[str, dict] = field(default_factory=dict)

    def listed(self, split: str) -> None:
        """Count one listed entry; also makes a split with no accepted image show up as 0."""
        self.rows[split] = self.rows.get(split, 0) + 1
        self.expected.setdefault(split, 0)

    def accept(self, key: str, split: str, **fields: object) -> None:
        self.expected[split] = self.expected.get(split, 0) + 1
        self.faces[key] = {"split": split, **fields}

    def reject(self, reason: str, key: str) -> None:
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown reject reason {reason!r}")
        self.rejects.setdefault(reason, []).append(key)


def dataset_rng(seed: int, dataset: str) -> np.random.Generator:
    """A generator per (seed, dataset): equal seeds must not draw equal pictures across
    datasets, or cross-dataset de-duplication tests would see false duplicates."""
    return np.random.default_rng([seed, zlib.crc32(dataset.encode())])


def corrupt_jpeg(rng: np.random.Generator) -> bytes:
    """A JPEG start-of-image marker followed by garbage without any 0xFF byte.

    With no further marker there are no image dimensions, so PIL cannot even identify the
    file, also with ImageFile.LOAD_TRUNCATED_IMAGES set; a merely truncated JPEG would
    decode as grey padding under that setting and pass as a valid image.
    """
    return b"\xff\xd8" + rng.integers(0, 0xFF, size=int(rng.integers(64, 256)),
                                      dtype=np.uint8).tobytes()


def random_size(rng: np.random.Generator, low: int = 160, high: int = 320) -> tuple[int, int]:
    """A non-square (w, h): converters must not assume square inputs."""
    width = int(rng.integers(low, high + 1))
    height = int(rng.integers(low, high + 1))
    return (width, height + 1 if height == width else height)


def random_box(rng: np.random.Generator, size: tuple[int, int]) -> Box:
    """A face box (x, y, w, h) somewhere in the image, taller than wide like real faces."""
    width, height = size
    face_w = int(rng.uniform(0.40, 0.60) * min(width, height))
    face_h = min(int(face_w * rng.uniform(1.1, 1.3)), height - 2)
    x = int(rng.integers(1, width - face_w))
    y = int(rng.integers(1, height - face_h))
    return (x, y, face_w, face_h)


def centred_box(rng: np.random.Generator, size: tuple[int, int],
                frac_w: float, frac_h: float) -> Box:
    """A face box around the image centre, as in aligned datasets.

    The jitter (at most 2 % of the image) stays far below the features' clearance from the
    box centre, so the image centre pixel is still skin.
    """
    width, height = size
    face_w, face_h = round(width * frac_w), round(height * frac_h)
    dx, dy = (int(d) for d in rng.integers(-2, 3, size=2) * np.array(size) // 100)
    return ((width - face_w) // 2 + dx, (height - face_h) // 2 + dy, face_w, face_h)


def write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
