"""IMDB-WIKI: `imdb_crop/NN/*.jpg` with `imdb.mat`, and `wiki_crop/NN/*.jpg` with `wiki.mat`.

Each .mat holds one struct; `loadmat(p)[db][0, 0][field][0]` is a per-image array for the
fields full_path, dob (Matlab datenum), photo_taken, gender, face_location ([x1, y1, x2, y2]),
face_score (-inf where no face) and second_face_score (NaN where none). The usual filter keeps
faces with face_score >= 1 and no second face; the rest are rejected as "filtered".

Ages follow the dataset's own convention: photo_taken is only a year, and the authors take the
photo to be from 1 July of it (their `datevec(datenum(photo_taken, 7, 1) - dob)`), so the age
is the person's age on that day: photo_taken - birth year, one less when born after 1 July.
Common loaders (yu4u/age-gender-estimation's calc_age) subtract one for every birth in July or
later, which differs only for a birth on 1 July itself. An age outside 0..MAX_AGE (a birth
after the photo, a datenum of year 0) is impossible: it is stored as missing (None), the face
kept, and counted in the manifest's `missing_labels`.
"""
from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
from scipy.io import loadmat

from ..items import Item, Reject, Scan, sample_key
from ...errors import UserError

SOURCE = "imdb_wiki"
PARTS = ("imdb", "wiki")
FIELDS = ("full_path", "dob", "photo_taken", "gender", "face_location", "face_score", "second_face_score")
MIN_FACE_SCORE = 1.0
MAX_AGE = 100  # as the common loaders' filter (0 <= age <= 100)


def datenum_to_date(datenum: float) -> dt.date | None:
    """Matlab counts days from year 0 (datenum 367 is 0001-01-01); Python from year 1."""
    if not math.isfinite(datenum) or datenum < 367:
        return None
    try:
        return dt.date.fromordinal(int(datenum) - 366)
    except (ValueError, OverflowError):
        return None


def age_on_photo(born: dt.date | None, photo_taken: int) -> int | None:
    """Age on 1 July of the photo year (the dataset's convention); None when impossible."""
    if born is None:
        return None
    age = photo_taken - born.year - ((born.month, born.day) > (7, 1))
    return age if 0 <= age <= MAX_AGE else None


def scan(root: Path, parts: tuple[str, ...] = PARTS) -> Scan:
    root = Path(root)
    items, rejects, list_files = [], [], []
    for part in parts:
        folder = root / f"{part}_crop"
        if not folder.is_dir():
            continue
        mat = next((p for p in (folder / f"{part}.mat", root / f"{part}.mat") if p.is_file()), None)
        if mat is None:
            raise UserError(f"{folder / (part + '.mat')}: missing; expected IMDB-WIKI's metadata file beside {folder.name}/")
        list_files.append(mat)
        for item, reject in _scan_part(part, mat, folder, root):
            (items if item is not None else rejects).append(item if item is not None else reject)
    if not list_files:
        raise UserError(f"{root}: neither imdb_crop/ nor wiki_crop/ found; expected IMDB-WIKI's published folders")
    return Scan(SOURCE, root, items, rejects, list_files)


def _load_fields(part: str, mat: Path) -> dict[str, np.ndarray]:
    try:
        record = loadmat(mat)[part][0, 0]
        fields = {name: record[name][0] for name in FIELDS}
        fields["name"] = record["name"][0] if "name" in record.dtype.names else None
    except (KeyError, ValueError, IndexError, TypeError, NotImplementedError, OSError) as err:
        raise UserError(f"{mat}: not an IMDB-WIKI metadata file with struct '{part}' and fields {', '.join(FIELDS)} ({err})") from None
    n = len(fields["full_path"])
    if any(len(fields[f]) != n for f in FIELDS):
        raise UserError(f"{mat}: fields {', '.join(FIELDS)} have different lengths")
    return fields


def _scan_part(part: str, mat: Path, folder: Path, root: Path):
    fields = _load_fields(part, mat)
    for i, path_cell in enumerate(fields["full_path"]):
        relpath = f"{folder.name}/{_text(path_cell)}"
        score, second = float(fields["face_score"][i]), float(fields["second_face_score"][i])
        if not (math.isfinite(score) and score >= MIN_FACE_SCORE) or math.isfinite(second):
            detail = f"face_score {score}, second_face_score {second}"
            yield None, Reject(relpath, "train", "filtered", detail)
            continue
        x1, y1, x2, y2 = (float(v) for v in np.asarray(fields["face_location"][i]).ravel()[:4])
        born = datenum_to_date(float(fields["dob"][i]))
        taken = int(fields["photo_taken"][i])
        gender = float(fields["gender"][i])
        meta = {
            "part": part,
            "dob": born.isoformat() if born else None,
            "photo_taken": taken,
            "age": age_on_photo(born, taken),
            "gender": None if math.isnan(gender) else int(gender),
        }
        if fields["name"] is not None:
            meta["name"] = _text(fields["name"][i])
        if meta["age"] is None:  # the face is kept; the label is missing, and counted
            meta["age_missing"] = (f"birth {meta['dob']}, photo {taken}: impossible age" if born else
                                   f"dob {float(fields['dob'][i])!r} is not a date")
        # face_location is already (x0, y0, x1, y1), the contract's box (shared.face_crop)
        yield Item(sample_key(SOURCE, relpath), "train", relpath, str(root / relpath),
                   box=(x1, y1, x2, y2), meta=meta, origin=f"{mat.name} entry {i + 1}"), None


def _text(cell) -> str:
    """MATLAB cell strings arrive as 1-element string arrays, or empty arrays for ''."""
    arr = np.asarray(cell).ravel()
    return str(arr[0]) if arr.size else ""
