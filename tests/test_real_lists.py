"""List and table files as real downloads and spreadsheets write them: encodings (BOM, CRLF,
UTF-16, trailing spaces, a header or not), rows listed twice, folders one level down, MXNet
records cut into parts, IMDB-WIKI's age convention. docs/faults.md names these tests."""
from __future__ import annotations

import json
import shutil
import struct
from datetime import date

import numpy as np
import pytest
import scipy.io

from eri_downstream.dataset import load_dataset
from eri_downstream.store import FeatureStore
from shared.errors import UserError
from shared.shards import recordio
from shared.shards.leakage import read_exclusions
from shared.shards.sources import SOURCES
from shared.shards.writer import build_shards
from shared.synthetic import face_jpeg, matlab_datenum, write_affectnet, write_casia_recordio, write_celeba
from shared.synthetic.reactions import write_hume_reaction
from shared.tables import read_text
from conftest import SMALL
from shard_utils import read_samples


def resave(path, encoding: str = "utf-8-sig", newline: str = "\r\n", trailing: str = "  ") -> None:
    """Re-save a text file the way spreadsheets and editors do: another encoding (with its BOM),
    CRLF line ends, spaces after every line."""
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_bytes("".join(line + trailing + newline for line in lines).encode(encoding))


ON_DISK = ("missing-image", "unreadable-image")  # found when the image is read, after the scan


def listed(planted) -> set[str]:
    """What the list rows themselves make items of: the faces and the images found bad later."""
    return set(planted.faces) | {p for r in ON_DISK for p in planted.rejects.get(r, [])}


def counts(scan) -> tuple[dict, dict]:
    by_split, reasons = {}, {}
    for item in scan.items:
        by_split[item.split] = by_split.get(item.split, 0) + 1
    for reject in scan.rejects:
        reasons[reject.reason] = reasons.get(reject.reason, 0) + 1
    return by_split, reasons


# -- text encodings (kind 3) ------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_affectnet_lists_saved_with_a_bom_and_crlf_lose_no_face(tmp_path, encoding):
    """The issue's input: training.csv (header) and headerless validation.csv saved with a UTF-8
    BOM and CRLF, which made the header a bad row and the first validation face a missing image;
    sibling: UTF-16 (Excel's "Unicode text"), trailing spaces on every line."""
    planted = write_affectnet(tmp_path / "affectnet")
    lists = tmp_path / "affectnet" / "Manually_Annotated_file_lists"
    for name in ("training.csv", "validation.csv"):
        resave(lists / name, encoding)
    assert (lists / "training.csv").read_bytes()[:2] in (b"\xef\xbb", b"\xff\xfe")
    scan = SOURCES["affectnet"].scan(tmp_path / "affectnet")
    assert {i.path for i in scan.items} == listed(planted) and len(scan.items) == len(listed(planted))
    assert counts(scan)[1] == {r: len(paths) for r, paths in planted.rejects.items() if r not in ON_DISK}
    assert all(planted.faces[i.path]["split"] == i.split for i in scan.items if i.path in planted.faces)


def test_celeba_lists_hume_tables_transcripts_and_exclusions_read_alike(tmp_path):
    """The same re-saves of every other list and table: CelebA's partition, landmarks and
    identities, insightface's train.idx, Hume-Reaction's data_info.csv, transcripts.csv and an
    exclusion list. Each reads exactly as the UTF-8 / LF original."""
    planted = write_celeba(tmp_path / "celeba")
    before = counts(SOURCES["celeba"].scan(tmp_path / "celeba"))
    for name in ("list_eval_partition.txt", "list_landmarks_align_celeba.txt", "identity_CelebA.txt"):
        resave(tmp_path / "celeba" / name, "utf-16")
    scan = SOURCES["celeba"].scan(tmp_path / "celeba")
    assert counts(scan) == before and {i.path for i in scan.items} == listed(planted)
    assert all("landmarks" in i.meta and "identity" in i.meta for i in scan.items)

    write_casia_recordio(tmp_path / "rec")
    index, _ = recordio.read_index(tmp_path / "rec" / "train.idx")
    resave(tmp_path / "rec" / "train.idx", "utf-8-sig", trailing="\t")
    assert recordio.read_index(tmp_path / "rec" / "train.idx") == (index, [])

    hume = write_hume_reaction(tmp_path / "hume", n_test=1, seconds=0.4)
    expected = [(e.file_id, e.split, e.labels) for e in load_dataset(hume.root)]
    resave(hume.root / "data_info.csv")
    assert [(e.file_id, e.split, e.labels) for e in load_dataset(hume.root)] == expected

    # a row listed twice: dropped with a warning when identical, one clear line when not
    table = hume.root / "data_info.csv"
    lines = table.read_text(encoding="utf-8-sig").splitlines()
    table.write_text("\n".join(lines + [lines[1]]) + "\n")
    assert [(e.file_id, e.split, e.labels) for e in load_dataset(hume.root)] == expected
    table.write_text("\n".join(lines + [lines[1].rsplit(",", 1)[0] + ",Peru"]) + "\n")
    with pytest.raises(UserError, match=rf"data_info.csv line {len(lines) + 1}: File_ID \d+ is listed again with "
                                        r"other values \(first at line 2\)"):
        load_dataset(hume.root)

    store = FeatureStore(tmp_path / "store")
    store.root.mkdir()
    store.write_transcripts({"00012": "well, that was sad", "00013": ""})
    resave(store.transcripts, trailing="")
    assert store.read_transcripts() == {"00012": "well, that was sad", "00013": ""}

    exclusions = tmp_path / "exclusions.txt"
    exclusions.write_text("# comment\naffectnet-1_ab\nceleba-000001\n")
    resave(exclusions)
    assert read_exclusions(exclusions) == {"affectnet-1_ab", "celeba-000001"}


def test_a_list_in_a_legacy_code_page_is_one_clear_error(tmp_path):
    path = tmp_path / "list_eval_partition.txt"
    path.write_bytes("000001.jpg 0\nFran\xe7ois.jpg 1\n".encode("cp1252"))
    with pytest.raises(UserError, match=r"list_eval_partition.txt: byte 17 is not UTF-8 text .*re-save it as UTF-8"):
        read_text(path)


# -- rows listed twice, folders one level down (kind 10) ---------------------------------------
def test_affectnet_extracted_one_level_down_with_a_row_listed_twice(tmp_path):
    """The official archive's layout, Manually_Annotated/Manually_Annotated_Images/ beside
    Manually_Annotated_file_lists/, and a training row listed twice: the folder is found, the
    repeat is a `duplicate` reject and the conversion goes on. Sibling: a training image also
    listed in validation.csv: the held-out copy is kept, so it cannot reach pretraining."""
    root = tmp_path / "affectnet"
    planted = write_affectnet(root)
    (root / "Manually_Annotated").mkdir()
    shutil.move(root / "Manually_Annotated_Images", root / "Manually_Annotated" / "Manually_Annotated_Images")
    lists = root / "Manually_Annotated_file_lists"
    train_rows = (lists / "training.csv").read_text().splitlines()
    repeated, moved = train_rows[1], next(r for r in train_rows[2:] if r.split(",")[0] in planted.faces)
    (lists / "training.csv").write_text("\n".join(train_rows + [repeated]) + "\n")
    with open(lists / "validation.csv", "a") as f:
        f.write(moved + "\n")
    manifest = build_shards(SOURCES["affectnet"].scan(root), tmp_path / "shards", SMALL, workers=1, progress=False)
    assert manifest["splits"]["train"]["samples"] == planted.expected["train"] - 1
    assert manifest["splits"]["val"]["samples"] == planted.expected["val"] + 1
    assert manifest["rejects"]["counts"]["duplicate"] == 2
    rows = (tmp_path / "shards" / "rejects.csv").read_text().splitlines()
    n = len(train_rows) + 1
    assert f"{repeated.split(',')[0]},train,duplicate,training.csv line {n}: listed again; kept training.csv line 2 (train)" in rows
    moved_line = train_rows.index(moved) + 1
    assert any(r.startswith(f"{moved.split(',')[0]},train,duplicate,training.csv line {moved_line}: listed again; kept "
                            "validation.csv line") for r in rows)
    samples = read_samples(tmp_path / "shards")
    assert {s["meta"]["path"] for s in samples.values()} == set(planted.faces)


def test_duplicates_in_celeba_and_recordio_lists_are_rejected_too(tmp_path):
    planted = write_celeba(tmp_path / "celeba")
    partition = tmp_path / "celeba" / "list_eval_partition.txt"
    lines = partition.read_text().splitlines()
    partition.write_text("\n".join(lines + [lines[0]]) + "\n")
    scan = SOURCES["celeba"].scan(tmp_path / "celeba")
    manifest = build_shards(scan, tmp_path / "celeba_shards", SMALL, workers=1, progress=False)
    assert manifest["rejects"]["counts"]["duplicate"] == 1
    assert {s: e["samples"] for s, e in manifest["splits"].items()} == planted.expected

    write_casia_recordio(tmp_path / "rec")
    idx = tmp_path / "rec" / "train.idx"
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join(lines + [lines[2]]) + "\n")
    scan = SOURCES["casia-webface"].scan(tmp_path / "rec")
    assert [(r.path, r.reason) for r in scan.rejects] == [("train.rec#2", "duplicate")]
    assert f"train.idx line {len(lines) + 1}: key 2 again" in scan.rejects[0].detail


# -- MXNet records in parts (kind 4) ------------------------------------------------------------
def dmlc_frames(payload: bytes) -> bytes:
    """The record as dmlc-core's RecordIOWriter::WriteRecord writes it (test's own port)."""
    magic = struct.pack("<I", recordio.MAGIC)
    out, start = b"", 0
    cuts = [i for i in range(0, len(payload) // 4 * 4, 4) if payload[i:i + 4] == magic]
    for n, cut in enumerate(cuts):
        out += magic + struct.pack("<I", ((1 if n == 0 else 2) << 29) | (cut - start)) + payload[start:cut]
        start = cut + 4
    out += magic + struct.pack("<I", ((3 if cuts else 0) << 29) | (len(payload) - start)) + payload[start:]
    return out + b"\0" * (-len(payload) % 4)


def test_a_record_cut_into_parts_is_joined_as_mxnet_reads_it(tmp_path):
    """The magic word at aligned offsets of the payload (twice in a row, once at the very end):
    parts with cflag 1, 2, 2, 3 (the last one empty); the joined payload is the original."""
    magic = struct.pack("<I", recordio.MAGIC)
    jpeg = face_jpeg(np.random.default_rng(0), (64, 64), (12, 10, 40, 46))
    image = jpeg + b"\0" * (-(24 + len(jpeg)) % 4) + magic + magic + b"tail" + magic
    payload = struct.pack("<IfQQ", 0, 7.0, 1, 0) + image
    rec = tmp_path / "train.rec"
    rec.write_bytes(dmlc_frames(b"\0" * 24) + dmlc_frames(payload))
    flags = []
    data, pos = rec.read_bytes(), 32  # after the 24-byte first record
    while pos < len(data):
        _, lrec = struct.unpack_from("<II", data, pos)
        flags.append(lrec >> 29)
        pos += 8 + (lrec & (2**29 - 1)) + (-(lrec & (2**29 - 1)) % 4 if lrec >> 29 in (0, 3) else 0)
    assert flags == [1, 2, 2, 3]
    record = recordio.read_record(rec, 32)
    assert record.label == (7.0,) and record.payload == image
    data = bytearray(rec.read_bytes())
    struct.pack_into("<I", data, 36, (2 << 29) | struct.unpack_from("<I", data, 36)[0] & (2**29 - 1))
    rec.write_bytes(bytes(data))  # the first part flagged as a middle one: a damaged record
    with pytest.raises(recordio.RecordIOError, match="cflag 2 where 0 or 1 was expected"):
        recordio.read_record(rec, 32)


def test_the_converted_pack_keeps_the_records_written_in_parts(raw, shards):
    """The built-in CASIA pack has two such records (2 and 3 parts, shared.synthetic.layouts.casia);
    both are faces in the shards with their identity, none is a reject."""
    samples = read_samples(shards["casia_rec"])
    planted = raw["casia_rec"]
    for key in ("train.rec#4", "train.rec#5"):
        meta = next(s["meta"] for s in samples.values() if s["meta"]["path"] == key)
        assert meta["identity"] == planted.faces[key]["identity"] == 1
    rejected = [line.split(",")[0] for line in (shards["casia_rec"] / "rejects.csv").read_text().splitlines()]
    assert "train.rec#4" not in rejected and "train.rec#5" not in rejected


# -- IMDB-WIKI ages (kind 5) -------------------------------------------------------------------
BIRTHS = [  # (birth, photo year, age on 1 July of that year: the dataset's convention)
    (date(1980, 9, 15), 2000, 19), (date(1980, 3, 10), 2000, 20), (date(1980, 7, 1), 2000, 20),
    (date(1980, 7, 2), 2000, 19), (date(2031, 5, 1), 2000, None), (date(1890, 1, 1), 2000, None)]


def test_imdb_wiki_ages_follow_the_datasets_convention_and_impossible_ones_are_missing(tmp_path):
    rng = np.random.default_rng(0)
    crop = tmp_path / "wiki_crop"
    paths = []
    for i, (born, taken, _) in enumerate(BIRTHS):
        paths.append(f"{i:02d}/{i}_{born.isoformat()}_{taken}.jpg")
        (crop / paths[-1]).parent.mkdir(parents=True, exist_ok=True)
        (crop / paths[-1]).write_bytes(face_jpeg(rng, (120, 140), (30, 30, 60, 72)))
    cell = np.empty(len(BIRTHS), dtype=object)
    locations = cell.copy()
    for i, path in enumerate(paths):
        cell[i], locations[i] = path, np.array([[30.0, 30.0, 90.0, 102.0]])
    scipy.io.savemat(crop / "wiki.mat", {"wiki": {
        "dob": np.array([matlab_datenum(b, 0.5) for b, _, _ in BIRTHS]),
        "photo_taken": np.array([t for _, t, _ in BIRTHS], dtype=np.int32), "full_path": cell,
        "gender": np.ones(len(BIRTHS)), "face_location": locations, "face_score": np.full(len(BIRTHS), 3.0),
        "second_face_score": np.full(len(BIRTHS), np.nan)}})
    manifest = build_shards(SOURCES["imdb-wiki"].scan(tmp_path), tmp_path / "shards", SMALL, workers=1,
                            progress=False)
    ages = {s["meta"]["path"]: s["meta"]["age"] for s in read_samples(tmp_path / "shards").values()}
    assert ages == {f"wiki_crop/{p}": age for p, (_, _, age) in zip(paths, BIRTHS)}
    assert manifest["missing_labels"] == {"age": 2} and manifest["splits"]["train"]["samples"] == 6
    notes = sorted(s["meta"].get("age_missing", "") for s in read_samples(tmp_path / "shards").values())
    assert notes[-2:] == ["birth 1890-01-01, photo 2000: impossible age", "birth 2031-05-01, photo 2000: impossible age"]
    assert json.loads((tmp_path / "shards" / "manifest.json").read_text())["missing_labels"] == {"age": 2}
