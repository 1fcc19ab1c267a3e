"""The synthetic raw datasets must follow the published layouts (REFERENCE.md section 3).

Everything is parsed here with plain, independent code (csv, struct, scipy.io.loadmat, PIL),
never with the writers' helpers, so a layout that drifts from the published format fails
here rather than silently teaching the converters a wrong format.
"""

from __future__ import annotations

import csv
import filecmp
import io
import itertools
import math
import re
import struct
from collections import Counter
from datetime import date
from pathlib import Path

import imagehash
import numpy as np
import pytest
import scipy.io
from PIL import Image, ImageFile

from shared.synthetic import (
    REJECT_REASONS, Planted, matlab_datenum, write_affectnet, write_all, write_celeba,
)

SKIN_TOLERANCE = 12  # per channel, JPEG quality 90 on a flat region
AFFECTNET_HEADER = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
                    "facial_landmarks", "expression", "valence", "arousal"]
MAGIC = 0xCED7230A


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Planted]:
    return write_all(tmp_path_factory.mktemp("raw"))


def decodes(data: bytes) -> bool:
    """Whether PIL fully decodes the bytes, even in its most lenient (truncated-ok) mode."""
    lenient = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        Image.open(io.BytesIO(data)).convert("RGB")
        return True
    except Exception:
        return False
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = lenient


def assert_skin_at_centre(data: bytes, face: dict) -> None:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    x, y, w, h = face["box"] if face["box"] is not None else (0, 0, *image.size)
    centre = np.array(image.getpixel((x + w // 2, y + h // 2)), dtype=int)
    assert np.abs(centre - np.array(face["skin"])).max() <= SKIN_TOLERANCE, (centre, face)


def check_counts(planted: Planted) -> None:
    """Every listed entry is either written or rejected, and faces match the counts."""
    assert sum(planted.rows.values()) == (sum(planted.expected.values())
                                          + sum(map(len, planted.rejects.values())))
    assert set(planted.rejects) <= set(REJECT_REASONS)
    per_split = Counter(face["split"] for face in planted.faces.values())
    assert {s: per_split.get(s, 0) for s in planted.expected} == planted.expected


def read_affectnet_list(planted: Planted, name: str) -> list[list[str]]:
    path = planted.root / "Manually_Annotated_file_lists" / name
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def classify_affectnet(row: list[str], images: Path) -> str:
    if len(row) != 9:
        return "bad-row"
    try:
        expression = int(row[6])
        float(row[7]), float(row[8])
    except ValueError:
        return "bad-row"
    if expression == 10:
        return "no-face"
    if not (images / row[0]).is_file():
        return "missing-image"
    return "ok" if decodes((images / row[0]).read_bytes()) else "unreadable-image"


@pytest.mark.parametrize("name, split, has_header, per_class",
                         [("training.csv", "train", True, 2), ("validation.csv", "val", False, 1)])
def test_affectnet_list_files(written, name, split, has_header, per_class):
    planted = written["affectnet"]
    rows = read_affectnet_list(planted, name)
    assert (rows[0] == AFFECTNET_HEADER) == has_header
    rows = rows[1:] if has_header else rows
    assert re.fullmatch(r"\d+/[0-9a-f]{40}\.jpg", rows[0][0])
    assert len(rows) == planted.rows[split]
    fates: dict[str, list[str]] = {}
    for row in rows:
        fates.setdefault(classify_affectnet(row, planted.image_dir), []).append(row[0])
    assert sorted(fates) == ["bad-row", "missing-image", "no-face", "ok", "unreadable-image"]
    for reason in ("bad-row", "missing-image", "no-face", "unreadable-image"):
        assert len(fates[reason]) == 1 and fates[reason][0] in planted.rejects[reason]
    accepted = {k for k, f in planted.faces.items() if f["split"] == split}
    assert set(fates["ok"]) == accepted
    good = [row for row in rows if row[0] in accepted]
    assert Counter(tuple(row[1:5]) for row in good if not row[1].isdigit()) == {
        ("NaN",) * 4: 1, ("",) * 4: 1}
    expressions = Counter(int(row[6]) for row in good)
    assert all(expressions[c] >= per_class for c in range(8)) and expressions[8] and expressions[9]
    for row in good:
        face = planted.faces[row[0]]
        width, height = Image.open(planted.image_dir / row[0]).size
        assert width != height and 160 <= min(width, height) and max(width, height) <= 320
        box = tuple(map(int, row[1:5])) if row[1].isdigit() else None
        assert box == face["box"] and int(row[6]) == face["expression"]
        values = row[5].split(";")
        assert len(values) == 136 and all(re.fullmatch(r"-?\d+\.\d\d", v) for v in values)
        xs, ys = np.array(values, dtype=float).reshape(68, 2).T
        assert xs.min() >= 0 and xs.max() < width and ys.min() >= 0 and ys.max() < height
        for text in row[7:]:
            assert text == "-2" or (re.fullmatch(r"-?\d\.\d{6}", text) and abs(float(text)) <= 1)
    assert any(row[7] == "-2" for row in good)


def test_affectnet_validation_header_is_optional(tmp_path):
    planted = write_affectnet(tmp_path, val_header=True)
    assert read_affectnet_list(planted, "validation.csv")[0] == AFFECTNET_HEADER


def test_affectnet_too_few_rows_is_refused(tmp_path):
    with pytest.raises(ValueError):
        write_affectnet(tmp_path, n_train=10)


@pytest.mark.parametrize("dataset", ["affectnet", "casia", "casia_rec", "celeba", "imdb_wiki"])
def test_planted_counts_are_consistent(written, dataset):
    check_counts(written[dataset])


@pytest.mark.parametrize("dataset", ["affectnet", "casia", "celeba", "imdb_wiki"])
def test_files_match_their_fate(written, dataset):
    planted = written[dataset]
    for key, face in planted.faces.items():
        assert_skin_at_centre((planted.image_dir / key).read_bytes(), face)
    for key in planted.rejects.get("missing-image", []):
        assert not (planted.image_dir / key).exists()
    for key in planted.rejects.get("unreadable-image", []):
        data = (planted.image_dir / key).read_bytes()
        assert data and not decodes(data)


def test_casia_folders(written):
    planted = written["casia"]
    base = planted.root / "CASIA-WebFace"
    assert planted.image_dir == base
    folders = sorted(p for p in base.iterdir())
    assert folders and all(p.is_dir() and re.fullmatch(r"\d{7}", p.name) for p in folders)
    jpgs = sorted(base.glob("*/*.jpg"))
    assert all(re.fullmatch(r"\d{3}\.jpg", p.name) for p in jpgs)
    assert len(jpgs) == planted.rows["train"]
    assert len(list(base.glob("*/Thumbs.db"))) == 1
    for path in jpgs:
        key = path.relative_to(base).as_posix()
        if key in planted.faces:
            assert Image.open(path).size == (250, 250)
            assert planted.faces[key]["identity"] == path.parent.name


def walk_recordio(path: Path) -> dict[int, tuple[int, int, tuple[float, ...], bytes, tuple[int, ...]]]:
    """offset -> (flag, header id, labels, image bytes, cflags of its parts), checking framing
    and padding; the parts of a multi-part record are joined with the magic word, as dmlc-core's
    reader does."""
    data, offset, records = path.read_bytes(), 0, {}
    while offset < len(data):
        start, payload, cflags = offset, b"", []
        while True:
            magic, lrecord = struct.unpack_from("<II", data, offset)
            assert magic == MAGIC
            cflags.append(lrecord >> 29)
            length = lrecord & ((1 << 29) - 1)
            payload += data[offset + 8: offset + 8 + length]
            padding = data[offset + 8 + length: offset + 8 + length + (-length % 4)]
            assert padding == b"\0" * (-length % 4)
            offset += 8 + length + len(padding)
            if cflags[-1] in (0, 3):
                break
            payload += struct.pack("<I", MAGIC)
        assert cflags == [0] or (cflags[0] == 1 and cflags[-1] == 3 and set(cflags[1:-1]) <= {2}), cflags
        flag, label, key, id2 = struct.unpack_from("<IfQQ", payload)
        labels = struct.unpack_from(f"<{flag}f", payload, 24) if flag else (label,)
        records[start] = (flag, key, labels, payload[24 + 4 * flag:], tuple(cflags))
    assert offset == len(data)
    return records


def test_casia_recordio(written):
    planted = written["casia_rec"]
    records = walk_recordio(planted.root / "train.rec")
    lines = (planted.root / "train.idx").read_text().splitlines()
    assert all(re.fullmatch(r"\d+\t\d+", line) for line in lines)
    index = {int(k): int(o) for k, o in (line.split("\t") for line in lines)}
    assert sorted(index.values()) == sorted(records) and sorted(index) == list(range(len(lines)))
    by_key = {key: records[offset] for key, offset in index.items()}
    assert all(record[1] == key for key, record in by_key.items())
    n_images = sum(1 for record in by_key.values() if record[0] == 0)
    n_ids = int((planted.root / "property").read_text().strip().split(",")[0])
    assert (planted.root / "property").read_text().strip() == f"{n_ids},112,112"
    assert by_key[0][0] == 2 and by_key[0][2] == (n_images + 1, n_images + 1 + n_ids)
    assert n_images == planted.rows["train"] and len(by_key) == n_images + n_ids + 1
    expected_start = 1
    for identity, key in enumerate(range(n_images + 1, n_images + 1 + n_ids)):
        flag, _, (start, end), image, _ = by_key[key]
        assert flag == 2 and image == b"" and start == expected_start
        for image_key in range(int(start), int(end)):
            flag, _, (label,), jpeg, _ = by_key[image_key]
            assert flag == 0 and label == identity
            rec_key = f"train.rec#{image_key}"
            if rec_key in planted.rejects.get("unreadable-image", []):
                assert not decodes(jpeg)
            else:
                assert Image.open(io.BytesIO(jpeg)).size == (112, 112)
                assert planted.faces[rec_key]["identity"] == identity
                assert_skin_at_centre(jpeg, planted.faces[rec_key])
        expected_start = int(end)
    assert expected_start == n_images + 1
    # MXNet's writer cut two records at the magic word in their JPEG: into 2 and into 3 parts
    assert sorted(r[4] for r in records.values() if r[4] != (0,)) == [(1, 2, 3), (1, 3)]


def split_lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()]


def test_celeba_lists(written):
    planted = written["celeba"]
    partition = split_lines(planted.root / "list_eval_partition.txt")
    assert all(len(t) == 2 and re.fullmatch(r"\d{6}\.jpg", t[0]) for t in partition)
    assert re.search(r"\.jpg {2,}\d", (planted.root / "list_eval_partition.txt").read_text())
    codes = [int(code) for _, code in partition]
    assert codes == sorted(codes) and set(codes) == {0, 1, 2}
    counts = Counter(("train", "val", "test")[c] for c in codes)
    assert counts == planted.rows and min(planted.expected.values()) >= 3
    landmarks = split_lines(planted.root / "list_landmarks_align_celeba.txt")
    assert int(landmarks[0][0]) == len(partition) and len(landmarks) == len(partition) + 2
    assert landmarks[1] == ["lefteye_x", "lefteye_y", "righteye_x", "righteye_y", "nose_x",
                            "nose_y", "leftmouth_x", "leftmouth_y", "rightmouth_x",
                            "rightmouth_y"]
    bbox = split_lines(planted.root / "list_bbox_celeba.txt")
    assert int(bbox[0][0]) == len(partition) and bbox[1] == ["image_id", "x_1", "y_1", "width",
                                                             "height"]
    outside = [int(x) + int(w) > 178 or int(y) + int(h) > 218 for _, x, y, w, h in bbox[2:]]
    assert sum(outside) > len(outside) // 2
    identities = dict(split_lines(planted.root / "identity_CelebA.txt"))
    assert list(identities) == [name for name, _ in partition]
    for name, *values in landmarks[2:]:
        if name not in planted.faces:
            continue
        face = planted.faces[name]
        points = list(zip(map(int, values[::2]), map(int, values[1::2])))
        assert points == [tuple(p) for p in face["landmarks"]]
        assert int(identities[name]) == face["identity"]
        image = Image.open(planted.image_dir / name).convert("RGB")
        assert image.size == (178, 218)
        left_eye = np.array(image.getpixel(points[0]), dtype=int)
        assert np.abs(left_eye - np.array(face["skin"])).max() > 30, "landmark is not on the eye"


def datenum_to_date(value: float) -> date:
    return date.fromordinal(math.floor(value) - 366)


def test_matlab_datenum_matches_matlab():
    assert matlab_datenum(date(2000, 1, 1)) == 730486.0
    assert matlab_datenum(date(1970, 1, 1), 0.5) == 719529.5


@pytest.mark.parametrize("db, n", [("imdb", 20), ("wiki", 10)])
def test_imdb_wiki_mat(written, db, n):
    planted = written["imdb_wiki"]
    crop = planted.root / f"{db}_crop"
    struct_ = scipy.io.loadmat(crop / f"{db}.mat")[db]
    assert struct_.shape == (1, 1)
    fields = {name: struct_[0, 0][name][0] for name in struct_.dtype.names}
    for name in ("dob", "photo_taken", "full_path", "gender", "name", "face_location",
                 "face_score", "second_face_score"):
        assert len(fields[name]) == n, name
    pattern = (r"(\d\d)/nm(\d{7})_rm\d+_(\d{4})-(\d{1,2})-(\d{1,2})_(\d{4})\.jpg" if db == "imdb"
               else r"(\d\d)/(\d+)_(\d{4})-(\d\d)-(\d\d)_(\d{4})\.jpg")
    for i in range(n):
        path = str(fields["full_path"][i][0])
        folder, person, year, month, day, taken = re.fullmatch(pattern, path).groups()
        assert int(folder) == int(person) % 100
        dob = datenum_to_date(float(fields["dob"][i]))
        assert dob == date(int(year), int(month), int(day))
        assert int(fields["photo_taken"][i]) == int(taken)
        location = fields["face_location"][i]
        assert location.shape == (1, 4)
        key = f"{db}_crop/{path}"
        score, second = float(fields["face_score"][i]), float(fields["second_face_score"][i])
        if not (score >= 1 and math.isnan(second)):
            assert key in planted.rejects["filtered"]
        elif not (crop / path).is_file():
            assert key in planted.rejects["missing-image"]
        elif not decodes((crop / path).read_bytes()):
            assert key in planted.rejects["unreadable-image"]
        else:
            face = planted.faces[key]
            x1, y1, x2, y2 = location[0]
            assert face["box"] == (x1, y1, x2 - x1, y2 - y1)
            # the dataset's convention: the age on 1 July of the photo year
            assert face["dob"] == dob.isoformat()
            assert face["age"] == int(taken) - dob.year - (1 if (dob.month, dob.day) > (7, 1) else 0)
            gender = float(fields["gender"][i])
            assert face["gender"] == (None if math.isnan(gender) else gender)
            assert face["name"] == str(fields["name"][i][0])
    scores = fields["face_score"]
    assert np.isneginf(scores).sum() == 1 and ((scores > 0) & (scores < 1)).sum() == 1
    assert np.isfinite(fields["second_face_score"]).sum() == 1
    assert np.isnan(fields["gender"].astype(float)).sum() == 1
    if db == "imdb":
        names = [str(name[0]) for name in fields["celeb_names"]]
        ids = struct_[0, 0]["celeb_id"][0]
        assert [names[int(k) - 1] for k in ids] == [str(name[0]) for name in fields["name"]]


def test_pictures_hash_apart(written):
    """Perceptual hashes must tell the pictures apart, as de-duplication relies on them."""
    hashes = [imagehash.phash(Image.open(planted.image_dir / key))
              for name, planted in written.items() if name != "casia_rec"
              for key in planted.faces]
    assert min(a - b for a, b in itertools.combinations(hashes, 2)) >= 8


def tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_same_seed_same_bytes(tmp_path):
    first, second = write_all(tmp_path / "a", seed=3), write_all(tmp_path / "b", seed=3)
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    for rel in tree(tmp_path / "a"):
        assert filecmp.cmp(tmp_path / "a" / rel, tmp_path / "b" / rel, shallow=False), rel
    for name in first:
        assert first[name].faces == second[name].faces
        assert first[name].rejects == second[name].rejects


def test_other_seed_other_pictures(tmp_path):
    write_celeba(tmp_path / "a", seed=0)
    write_celeba(tmp_path / "b", seed=1)
    image = "img_align_celeba/000001.jpg"
    assert (tmp_path / "a" / image).read_bytes() != (tmp_path / "b" / image).read_bytes()
