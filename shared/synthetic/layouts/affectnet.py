"""A tiny AffectNet in the published layout, with the quirks of the real list files.

Layout (REFERENCE.md section 3)::

    Manually_Annotated_Images/<int>/<40 hex>.jpg
    Manually_Annotated_file_lists/training.csv     header row
    Manually_Annotated_file_lists/validation.csv   no header row (by default)

Each list file holds, at shuffled positions (never the first data row, so header
detection sees a normal row first), one row of each quirk:

- "nan-box": face box fields written as literal `NaN`; accepted, whole image is the face;
- "empty-box": face box fields left empty; accepted likewise;
- "no-face": expression 10 -> rejected "no-face" (valence/arousal -2, image without face);
- "missing-image": listed image not on disk -> "missing-image";
- "unreadable-image": the jpg is garbage -> "unreadable-image";
- "bad-row": training.csv has expression `abc`, validation.csv a row cut to its first five
  columns -> "bad-row" (the image itself exists and is fine).

Accepted rows cover expressions 0-7 at least twice (train) / once (val), plus one row each of
8 (None) and 9 (Uncertain); those are faces, so a converter keeps them with their code. The
expression-9 row has valence and arousal -2, the invalid marker.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from shared.synthetic.faces import (
    Box, face_jpeg, draw_background, jpeg_bytes, landmarks_68, random_skin,
)
from shared.synthetic.layouts.common import (
    Planted, centred_box, corrupt_jpeg, dataset_rng, random_box, random_size, write_bytes,
)

IMAGES = "Manually_Annotated_Images"
LISTS = "Manually_Annotated_file_lists"
HEADER = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
          "facial_landmarks", "expression", "valence", "arousal"]
QUIRKS = ("nan-box", "empty-box", "no-face", "missing-image", "unreadable-image", "bad-row")
REJECTED_QUIRKS = ("no-face", "missing-image", "unreadable-image", "bad-row")
N_CLASSES = 8


def _row_kinds(rng: np.random.Generator, n_rows: int) -> list[str]:
    """One kind per row: every quirk once, the rest "ok"; row 0 is always "ok"."""
    tail = ["ok"] * (n_rows - 1 - len(QUIRKS)) + list(QUIRKS)
    rng.shuffle(tail)
    return ["ok", *tail]


def _expressions(rng: np.random.Generator, n_accepted: int, per_class: int) -> list[int]:
    """Codes for the accepted rows: each of 0-7 `per_class` times, one 8, one 9, rest random."""
    codes = [c for c in range(N_CLASSES) for _ in range(per_class)] + [8, 9]
    codes += [int(c) for c in rng.integers(0, N_CLASSES, size=n_accepted - len(codes))]
    rng.shuffle(codes)
    return codes


def _landmark_field(rng: np.random.Generator, box: Box) -> tuple[str, list[tuple[float, float]]]:
    # A pixel of jitter makes the points look annotated rather than templated.
    points = [(round(x + rng.uniform(-1, 1), 2), round(y + rng.uniform(-1, 1), 2))
              for x, y in landmarks_68(box)]
    return ";".join(f"{v:.2f}" for point in points for v in point), points


def _affect(rng: np.random.Generator, expression: int) -> tuple[float, float, list[str]]:
    """Valence, arousal and their CSV text; -2 (the invalid marker) for codes 9 and 10."""
    if expression in (9, 10):
        return -2.0, -2.0, ["-2", "-2"]
    valence, arousal = (round(float(rng.uniform(-1, 1)), 6) for _ in range(2))
    return valence, arousal, [f"{valence:.6f}", f"{arousal:.6f}"]


def _box_fields(kind: str, box: Box) -> list[str]:
    # Both spellings of a missing box occur in the wild and read as NaN in pandas.
    return {"nan-box": ["NaN"] * 4, "empty-box": [""] * 4}.get(kind, [str(v) for v in box])


def _malformed(row: list[str], split: str) -> list[str]:
    """Train gets a non-integer expression, val a row cut after the box columns."""
    return row[:5] if split == "val" else [*row[:6], "abc", *row[7:]]


def _image_key(rng: np.random.Generator) -> str:
    folder = int(rng.integers(1, 6))
    return f"{folder}/{rng.bytes(20).hex()}.jpg"


def _write_image(rng: np.random.Generator, path: Path, kind: str, size: tuple[int, int],
                 box: Box, skin: tuple[int, int, int]) -> None:
    if kind == "missing-image":
        return
    if kind == "unreadable-image":
        data = corrupt_jpeg(rng)
    elif kind == "no-face":
        data = jpeg_bytes(draw_background(rng, size))
    else:
        data = face_jpeg(rng, size, box, skin)
    write_bytes(path, data)


def _split_rows(rng: np.random.Generator, planted: Planted, split: str, n_rows: int,
                per_class: int) -> list[list[str]]:
    """Draw the images of one list file and return its data rows."""
    minimum = len(REJECTED_QUIRKS) + N_CLASSES * per_class + 2
    if n_rows < minimum:
        raise ValueError(f"{split} needs at least {minimum} rows, got {n_rows}")
    kinds = _row_kinds(rng, n_rows)
    codes = iter(_expressions(rng, n_rows - len(REJECTED_QUIRKS), per_class))
    rows = []
    for kind in kinds:
        key = _image_key(rng)
        size = random_size(rng)
        whole_image = kind in ("nan-box", "empty-box")
        box = centred_box(rng, size, 0.6, 0.75) if whole_image else random_box(rng, size)
        skin = random_skin(rng)
        _write_image(rng, planted.image_dir / key, kind, size, box, skin)
        landmarks, points = _landmark_field(rng, box)
        if kind in REJECTED_QUIRKS:
            expression = 10 if kind == "no-face" else int(rng.integers(0, N_CLASSES))
        else:
            expression = next(codes)
        valence, arousal, affect_fields = _affect(rng, expression)
        row = [key, *_box_fields(kind, box), landmarks, str(expression), *affect_fields]
        rows.append(_malformed(row, split) if kind == "bad-row" else row)
        planted.listed(split)
        if kind in REJECTED_QUIRKS:
            planted.reject(kind, key)
        else:
            planted.accept(key, split, box=None if whole_image else box, skin=skin,
                           expression=expression, valence=valence, arousal=arousal,
                           landmarks=points)
    return rows


def write_list(path: Path, rows: list[list[str]], header: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        if header:
            writer.writerow(HEADER)
        writer.writerows(rows)


def write_affectnet(root: Path, seed: int = 0, n_train: int = 24, n_val: int = 16,
                    val_header: bool = False) -> Planted:
    """Write a tiny AffectNet under `root`; keys are subDirectory_filePath values.

    Splits: "train" (training.csv, header row) and "val" (validation.csv, header row only
    when `val_header`, since the published file comes without one).
    """
    root = Path(root)
    rng = dataset_rng(seed, "affectnet")
    planted = Planted(root=root, image_dir=root / IMAGES)
    train = _split_rows(rng, planted, "train", n_train, per_class=2)
    val = _split_rows(rng, planted, "val", n_val, per_class=1)
    write_list(root / LISTS / "training.csv", train, header=True)
    write_list(root / LISTS / "validation.csv", val, header=val_header)
    return planted
