"""AffectNet: `Manually_Annotated_Images/<int>/<name>.jpg` and two list files.

The official archive extracts the images one level down, as
`Manually_Annotated/Manually_Annotated_Images/`, beside `Manually_Annotated_file_lists/`: both
places are looked in (for the lists too). `training.csv` has a header row; `validation.csv`
often does not.
Columns: subDirectory_filePath, face_x, face_y, face_width, face_height, facial_landmarks
(136 floats joined by ';'), expression, valence, arousal. Face boxes may be NaN (then the whole
image is used), valence/arousal -2 marks an invalid value. Expression 10 (No-Face) is never
written. The validation split is the field's test set: it is held out of pretraining.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..items import Item, Reject, Scan, find_dir, require_file, sample_key
from ...errors import UserError
from ...face_crop import xywh_to_xyxy
from ...tables import csv_rows, is_header

SOURCE = "affectnet"
COLUMNS = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
           "facial_landmarks", "expression", "valence", "arousal"]
EXPRESSIONS = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt",
               "None", "Uncertain", "No-Face"]
NO_FACE = 10
INVALID_VA = -2.0
LISTS = {"train": "training.csv", "val": "validation.csv"}


def scan(root: Path) -> Scan:
    root = Path(root)
    images = find_dir(root, "Manually_Annotated_Images", "AffectNet's image folder Manually_Annotated_Images/<int>/<name>.jpg")
    lists = find_dir(root, "Manually_Annotated_file_lists", "AffectNet's list folder with training.csv and validation.csv")
    items, rejects, list_files = [], [], []
    for split, name in LISTS.items():
        path = require_file(lists / name, f"AffectNet's list file with columns {','.join(COLUMNS)}")
        list_files.append(path)
        for row_items, row_reject in _parse_list(path, split, images):
            if row_items is not None:
                items.append(row_items)
            else:
                rejects.append(row_reject)
    return Scan(SOURCE, root, items, rejects, list_files, holdout_splits={"val"})


def _parse_list(path: Path, split: str, images: Path):
    rows = csv_rows(path, _FORMAT)  # BOM, CRLF, trailing spaces: shared.tables
    if rows and is_header(rows[0][1], COLUMNS[0]):
        header = rows[0][1]
        if [c.lower() for c in header[: len(COLUMNS)]] != [c.lower() for c in COLUMNS]:
            raise UserError(f"{path} line {rows[0][0]}: header {','.join(header)!r} does not match AffectNet's "
                            f"columns; expected {_FORMAT}")
        rows = rows[1:]
    parsed = [_parse_row(r, split, images, line) for line, r in rows]
    for (line, _), (item, _) in zip(rows, parsed):
        if item is not None:
            item.origin = f"{path.name} line {line}"
    if rows and all(item is None for item, _ in parsed):  # not one usable row: the wrong file or format
        line, row = rows[0]
        raise UserError(f"{path}: no row has AffectNet's {len(COLUMNS)} columns; line {line} has {len(row)}"
                        f"{_separator_hint(row)}; expected {_FORMAT}")
    return parsed


_FORMAT = f"{len(COLUMNS)} comma-separated columns {','.join(COLUMNS)} (header line optional)"


def _separator_hint(row: list[str]) -> str:
    """Most wrong list files are a re-save with another separator: say so."""
    for sep, name in (("\t", "tabs"), (";", "semicolons"), ("|", "bars")):
        if len(row) == 1 and row[0].count(sep) >= len(COLUMNS) - 1:
            return f" and looks separated by {name}"
    return ""


def _parse_row(row: list[str], split: str, images: Path, line: int = 0):
    relpath = row[0] if row else ""
    if len(row) != len(COLUMNS):
        return None, Reject(relpath, split, "bad-row", f"line {line}: {len(row)} columns, expected {len(COLUMNS)}")
    try:
        expression = int(float(row[6]))
        valence, arousal = float(row[7]), float(row[8])
    except ValueError:
        return None, Reject(relpath, split, "bad-row", f"line {line}: expression/valence/arousal not numeric: {row[6:9]}")
    if not relpath or not 0 <= expression <= NO_FACE:
        return None, Reject(relpath, split, "bad-row", f"line {line}: path {relpath!r}, expression {expression}")
    if expression == NO_FACE:
        return None, Reject(relpath, split, "no-face", "expression 10 (No-Face)")
    meta = {
        "expression": expression,
        "expression_name": EXPRESSIONS[expression],
        "valence": None if valence == INVALID_VA else valence,
        "arousal": None if arousal == INVALID_VA else arousal,
        "landmarks": _landmarks(row[5]),
    }
    item = Item(sample_key(SOURCE, relpath), split, relpath, str(images / relpath),
                box=_box(row[1:5]), meta=meta)
    return item, None


def _box(fields: list[str]):
    """face_x, face_y, face_width, face_height -> (x0, y0, x1, y1), or None for a missing box."""
    try:
        x, y, w, h = (float(v) for v in fields)
    except ValueError:  # empty fields
        return None
    if any(math.isnan(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return None
    return xywh_to_xyxy((x, y, w, h))


def _landmarks(field: str):
    try:
        values = [float(v) for v in field.split(";")]
    except ValueError:
        return None
    if len(values) != 136:
        return None
    return [values[i:i + 2] for i in range(0, 136, 2)]
