"""CelebA aligned: `img_align_celeba/000001.jpg`, the partition list, optional landmarks and identities.

`list_eval_partition.txt` lines are `000001.jpg 0` (0 train, 1 val, 2 test), separated by runs
of whitespace. Archives that extract `img_align_celeba/img_align_celeba/` (Kaggle's) are read too. The landmark file starts with a count line and a header line. The bounding-box
file describes the in-the-wild images, not the aligned ones, so it is not used.
"""
from __future__ import annotations

from pathlib import Path

from ..items import Item, Reject, Scan, require_dir, require_file, sample_key
from ...errors import UserError
from ...tables import field_lines

SOURCE = "celeba"
SPLITS = {"0": "train", "1": "val", "2": "test"}
LANDMARK_COLUMNS = 10
PARTITION_FORMAT = "lines '<image> <0|1|2>' (0 train, 1 val, 2 test) separated by whitespace, e.g. '000001.jpg 0'"


def scan(root: Path) -> Scan:
    root = Path(root)
    images = require_dir(root / "img_align_celeba", "CelebA's aligned images img_align_celeba/000001.jpg ...")
    if (images / "img_align_celeba").is_dir():  # the archive extracted one level down
        images = images / "img_align_celeba"
    partition = require_file(root / "list_eval_partition.txt", "CelebA's partition list with lines '000001.jpg 0'")
    list_files = [partition]
    landmarks = {}
    if (root / "list_landmarks_align_celeba.txt").is_file():
        list_files.append(root / "list_landmarks_align_celeba.txt")
        landmarks = _read_landmarks(list_files[-1])
    identities = {}
    if (root / "identity_CelebA.txt").is_file():
        list_files.append(root / "identity_CelebA.txt")
        identities = _read_pairs(list_files[-1])

    items, rejects, first_bad = [], [], None
    for lineno, fields in field_lines(partition):
        if len(fields) != 2 or fields[1] not in SPLITS:
            first_bad = first_bad or f"line {lineno} has {len(fields)} field(s) {' '.join(fields)[:60]!r}"
            rejects.append(Reject(fields[0] if fields else f"line {lineno}", "", "bad-row",
                                  f"{partition.name}:{lineno}: expected '<image> <0|1|2>'"))
            continue
        name, split = fields[0], SPLITS[fields[1]]
        meta = {}
        if name in landmarks:
            meta["landmarks"] = landmarks[name]
        if name in identities:
            meta["identity"] = int(identities[name])
        items.append(Item(sample_key(SOURCE, name), split, name, str(images / name), meta=meta,
                          origin=f"{partition.name} line {lineno}"))
    if not items:
        raise UserError(f"{partition}: no '<image> <0|1|2>' lines found; {first_bad or 'the file is empty'}; "
                        f"expected {PARTITION_FORMAT}")
    return Scan(SOURCE, root, items, rejects, list_files)


def _read_landmarks(path: Path) -> dict[str, list[list[int]]]:
    """A malformed row stops the conversion: the file is damaged, and its labels are not to be
    trusted (or silently dropped) for the rows that happen to parse."""
    expected = "a count line, a header line, then '<image> x1 y1 ... x5 y5' rows (11 whitespace-separated fields)"
    lines = field_lines(path)
    if len(lines) < 2 or len(lines[0][1]) != 1 or not lines[0][1][0].isdigit():
        raise UserError(f"{path}: expected {expected}")
    out = {}
    for lineno, fields in lines[2:]:
        values = [int(v) for v in fields[1:] if v.lstrip("-").isdigit()]
        if len(fields) != LANDMARK_COLUMNS + 1 or len(values) != LANDMARK_COLUMNS:
            raise UserError(f"{path} line {lineno}: {len(fields)} field(s) {' '.join(fields)[:60]!r}; expected {expected}")
        out[fields[0]] = [values[i:i + 2] for i in range(0, LANDMARK_COLUMNS, 2)]
    return out


def _read_pairs(path: Path) -> dict[str, str]:
    pairs = {}
    for lineno, fields in field_lines(path):
        if len(fields) != 2 or not fields[1].isdigit():
            raise UserError(f"{path} line {lineno}: {' '.join(fields)[:60]!r}; expected '<image> <identity number>' "
                            "lines, e.g. '000001.jpg 2880'")
        pairs[fields[0]] = fields[1]
    return pairs
