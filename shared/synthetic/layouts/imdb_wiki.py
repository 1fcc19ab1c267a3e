"""A tiny IMDB-WIKI in the published layout.

Layout::

    imdb_crop/NN/nm<7 digits>_rm<digits>_<YYYY-M-D>_<YYYY>.jpg    NN = nm id mod 100
    imdb_crop/imdb.mat
    wiki_crop/NN/<id>_<YYYY-MM-DD>_<YYYY>.jpg                      NN = id mod 100
    wiki_crop/wiki.mat

Each .mat (MATLAB v5) holds one 1x1 struct, `imdb` or `wiki`, whose fields are 1xN arrays,
read as `loadmat(p)[db][0, 0][field][0]`: dob (datenum), photo_taken, full_path (cell of
paths relative to the crop folder), gender (1 male, 0 female, NaN unknown), name (cell),
face_location (cell of 1x4 [x1, y1, x2, y2]), face_score, second_face_score (NaN where
none); imdb adds celeb_names (cell) and celeb_id (1-based index into celeb_names).

Both databases get, at shuffled positions, one row of each quirk:

- face_score -inf (picture without a face, face_location [1, 1, 1, 1]) -> "filtered";
- face_score 0.5 -> "filtered" (the usual filter keeps face_score >= 1);
- a finite second_face_score (2.3) -> "filtered";
- a garbage jpg -> "unreadable-image"; a listed jpg absent on disk -> "missing-image";
- gender NaN: accepted, recorded as gender None.
"""

from __future__ import annotations

import io
from datetime import date
from pathlib import Path

import numpy as np
import scipy.io

from shared.synthetic.faces import draw_background, face_jpeg, jpeg_bytes, random_skin
from shared.synthetic.layouts.common import (
    Planted, corrupt_jpeg, dataset_rng, random_box, random_size, write_bytes,
)

QUIRKS = ("no-face", "low-score", "second-face", "unreadable-image", "missing-image",
          "unknown-gender")
SCORES = {"no-face": -np.inf, "low-score": 0.5}
SECOND_FACE_SCORE = 2.3
FIRST_NAMES = ("Ada", "Bruno", "Chiara", "Dmitri", "Elif", "Farid", "Greta", "Hiro")
LAST_NAMES = ("Abara", "Berg", "Castell", "Dunmore", "Eskola", "Ferrant", "Gallo", "Holm")


def matlab_datenum(day: date, fraction: float = 0.0) -> float:
    """MATLAB's serial date number of `day` plus a fraction of a day.

    MATLAB counts days from the proleptic year 0 (datenum(0000-01-01) = 1), Python's
    ordinal from year 1 (date(1, 1, 1).toordinal() = 1); year 0 is a leap year of 366
    days, hence the offset. The calendar day is recovered as
    date.fromordinal(floor(datenum) - 366), so any fraction in [0, 1) keeps the day.
    """
    return float(day.toordinal() + 366) + fraction


def _random_dob(rng: np.random.Generator) -> date:
    return date.fromordinal(int(rng.integers(date(1930, 1, 1).toordinal(),
                                             date(1995, 12, 31).toordinal())))


def _name(index: int) -> str:
    """A distinct name per index, so celeb_id can map names back to people unambiguously."""
    rest, first = divmod(index, len(FIRST_NAMES))
    round_, last = divmod(rest, len(LAST_NAMES))
    suffix = f" {round_ + 1}" if round_ else ""
    return f"{FIRST_NAMES[first]} {LAST_NAMES[last]}{suffix}"


def _people(rng: np.random.Generator, db: str, n: int) -> list[dict]:
    """The person in each of the `n` photos: imdb re-uses celebrities, wiki has one photo
    per person (wiki file names carry no photo id, so a repeat could collide)."""
    count = max(1, n // 2) if db == "imdb" else n
    ids = rng.choice(10_000_000 if db == "imdb" else 50_000_000, size=count, replace=False)
    names = rng.choice(max(64, count), size=count, replace=False)
    people = [{"id": int(i), "dob": _random_dob(rng), "name": _name(int(k))}
              for i, k in zip(ids, names)]
    if db == "wiki":
        return people
    return [people[int(i)] for i in rng.integers(0, count, size=n)]


def _file_name(rng: np.random.Generator, db: str, person: dict, taken: int) -> str:
    dob = person["dob"]
    if db == "imdb":
        stem = f"nm{person['id']:07d}_rm{int(rng.integers(10**8, 4 * 10**9))}_" \
               f"{dob.year}-{dob.month}-{dob.day}"
    else:
        stem = f"{person['id']}_{dob.isoformat()}"
    return f"{person['id'] % 100:02d}/{stem}_{taken}.jpg"


def _cell(values: list) -> np.ndarray:
    # An object array becomes a MATLAB cell array; built element-wise so that equal-shaped
    # entries (the 1x4 face locations) are not merged into one 2-D numeric array.
    cell = np.empty(len(values), dtype=object)
    for index, value in enumerate(values):
        cell[index] = value
    return cell


def _entry(rng: np.random.Generator, planted: Planted, db: str, person: dict,
           kind: str) -> dict:
    """Draw one photo of `person`, record its fate in `planted`, return its .mat values."""
    taken = int(rng.integers(person["dob"].year + 15, 2016))
    path = _file_name(rng, db, person, taken)
    key = f"{db}_crop/{path}"
    size = random_size(rng)
    box = random_box(rng, size)
    skin = random_skin(rng)
    gender = np.nan if kind == "unknown-gender" else float(rng.integers(0, 2))
    fraction = float(rng.choice([0.0, 0.0, 0.25, 0.75]))
    x, y, w, h = box
    location = [1.0, 1.0, 1.0, 1.0] if kind == "no-face" else [x, y, x + w, y + h]
    planted.listed("train")
    if kind == "unreadable-image":
        write_bytes(planted.image_dir / key, corrupt_jpeg(rng))
    elif kind == "no-face":
        write_bytes(planted.image_dir / key, jpeg_bytes(draw_background(rng, size)))
    elif kind != "missing-image":
        write_bytes(planted.image_dir / key, face_jpeg(rng, size, box, skin))
    if kind in ("no-face", "low-score", "second-face"):
        planted.reject("filtered", key)
    elif kind in ("unreadable-image", "missing-image"):
        planted.reject(kind, key)
    else:
        born = person["dob"]  # the dataset's age: on 1 July of the photo year
        planted.accept(key, "train", box=box, skin=skin, dob=born.isoformat(),
                       photo_taken=taken, age=taken - born.year - (1 if (born.month, born.day) > (7, 1) else 0),
                       gender=None if np.isnan(gender) else gender, name=person["name"])
    return {"dob": matlab_datenum(person["dob"], fraction), "photo_taken": taken,
            "full_path": path, "gender": gender, "name": person["name"],
            "face_location": np.array([location], dtype=float),
            "face_score": SCORES.get(kind, round(float(rng.uniform(1.2, 6.0)), 4)),
            "second_face_score": SECOND_FACE_SCORE if kind == "second-face" else np.nan}


def _write_db(rng: np.random.Generator, planted: Planted, db: str, n: int) -> None:
    if n < len(QUIRKS) + 1:
        raise ValueError(f"{db} needs at least {len(QUIRKS) + 1} entries, got {n}")
    kinds = ["ok"] * (n - len(QUIRKS)) + list(QUIRKS)
    rng.shuffle(kinds)
    people = _people(rng, db, n)
    entries = [_entry(rng, planted, db, person, kind) for person, kind in zip(people, kinds)]
    fields = {
        "dob": np.array([e["dob"] for e in entries]),
        "photo_taken": np.array([e["photo_taken"] for e in entries], dtype=np.int32),
        "full_path": _cell([e["full_path"] for e in entries]),
        "gender": np.array([e["gender"] for e in entries]),
        "name": _cell([e["name"] for e in entries]),
        "face_location": _cell([e["face_location"] for e in entries]),
        "face_score": np.array([e["face_score"] for e in entries]),
        "second_face_score": np.array([e["second_face_score"] for e in entries]),
    }
    if db == "imdb":
        names = sorted({person["name"] for person in people})
        fields["celeb_names"] = _cell(names)
        fields["celeb_id"] = np.array([names.index(p["name"]) + 1 for p in people], dtype=float)
    write_bytes(planted.image_dir / f"{db}_crop" / f"{db}.mat", _mat_bytes({db: fields}))


def _mat_bytes(variables: dict) -> bytes:
    """A MATLAB v5 file with a fixed header text.

    savemat stamps the 116-byte header text with the current time; replacing it keeps the
    output byte-identical across runs. Readers only parse the version and byte-order marks
    that follow the text.
    """
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, variables)
    text = b"MATLAB 5.0 MAT-file, Platform: posix, Created by: shared.synthetic".ljust(116)
    return text + buffer.getvalue()[116:]


def write_imdb_wiki(root: Path, seed: int = 0, n_imdb: int = 20, n_wiki: int = 10) -> Planted:
    """Write tiny `imdb_crop` and `wiki_crop` trees under `root`; split "train".

    Keys are relative to `root` (`imdb_crop/01/nm...jpg`); faces[key] carries "box" (the
    face_location as x, y, w, h), "dob" (ISO date), "photo_taken", "age" (on 1 July of the
    photo year, the dataset's convention), "gender" (0.0 / 1.0 / None) and "name".
    """
    root = Path(root)
    rng = dataset_rng(seed, "imdb-wiki")
    planted = Planted(root=root, image_dir=root)
    _write_db(rng, planted, "imdb", n_imdb)
    _write_db(rng, planted, "wiki", n_wiki)
    return planted
