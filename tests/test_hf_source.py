"""face-shards hf: Hugging Face datasets (save_to_disk folders, parquet files) as face shards."""
from __future__ import annotations

import csv
import io
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from shared.errors import UserError, run_cli
from shared.shards import leakage
from shared.shards.cli import main
from shared.shards.sources import hf
from shared.shards.sources.hf_labels import parse_label_map
from shared.shards.writer import ShardSettings, build_shards
from shared.stream import Augment, FaceStream, StreamConfig, build_sources
from hf_planted import (BLUE, LABEL_MAP, NAMES, RED, encoded, planted_rows, textured, write_parquet,
                        write_plain_parquet, write_saved)
from shard_utils import centre_rgb, read_samples

SETTINGS = ShardSettings(size=32, margin=0.2, quality=95, shard_size=4, seed=0)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """{kind: (shard folder, planted rows per split)}: the same rows as save_to_disk and as parquet."""
    root = tmp_path_factory.mktemp("hf")
    rows = planted_rows()
    inputs = {"save_to_disk": (write_saved(root / "saved", rows), rows),
              "parquet": (write_parquet(root / "fer.parquet", rows["train"]), {"train": rows["train"]})}
    out = {}
    for kind, (location, splits) in inputs.items():
        columns = hf.Columns(label="label", label_map=parse_label_map(LABEL_MAP), box="box")
        scan = hf.scan(str(location), columns, name="fer", cache_dir=str(root / "cache"))
        # the save_to_disk case reads the Arrow files in worker processes, the parquet one in this one
        build_shards(scan, root / kind, SETTINGS, workers=2 if kind == "save_to_disk" else 1, progress=False)
        out[kind] = (root / kind, splits)
    return out


@pytest.mark.parametrize("kind", ["save_to_disk", "parquet"])
def test_every_row_is_a_face_with_its_labels_or_a_listed_reject(converted, kind):
    folder, splits = converted[kind]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["complete"] and manifest["source"] == "fer"
    assert {s: e["samples"] for s, e in manifest["splits"].items()} == {
        s: sum(r.reject is None for r in rows) for s, rows in splits.items()}
    assert {s: e["holdout"] for s, e in manifest["splits"].items()} == {s: s == "test" for s in splits}
    assert manifest["rejects"]["counts"] == {"bad-row": 1, "missing-image": 1, "unreadable-image": 1}
    with open(folder / "rejects.csv", newline="") as f:
        listed = {(r["path"], r["reason"]) for r in csv.DictReader(f)}
    assert listed == {(f"train[{i}]", r.reject) for i, r in enumerate(splits["train"]) if r.reject}
    kept = {f"fer-{s}_{i}": r for s, rows in splits.items() for i, r in enumerate(rows) if r.reject is None}
    # a null label, ClassLabel's -1 and a label the map leaves out are missing expressions, counted
    assert manifest["missing_labels"] == {"expression": sum(r.expression is None for r in kept.values())}
    assert manifest["dataset"]["label_map"] == {"angry": 6, "happy": 1, "neutral": 0}

    samples = read_samples(folder)
    assert set(samples) == set(kept)
    for key, row in kept.items():
        meta = samples[key]["meta"]
        assert meta["expression"] == row.expression and samples[key]["cls"] == row.expression, key
        assert meta["label"] == (NAMES.index(row.label) if isinstance(row.label, str) else None), key
        if row.expression is None:
            why = "is not in --label-map" if row.label == "contempt" else "is empty in this row"
            assert why in meta["expression_missing"], key
        if row.centre is not None:  # 16-bit, palette, CMYK and grey images made 8-bit RGB as shown
            assert np.abs(centre_rgb(samples[key]["jpg"]) - row.centre).max() <= 12, (key, centre_rgb(samples[key]["jpg"]))
        for field, value in row.extra.items():
            assert meta[field] == value, (key, field)
        if row.box is None:  # a face crop already: the centred square of the shorter side, no margin
            w, h = meta["orig_size"]
            assert meta["crop_box"] == [(w - min(w, h)) / 2, (h - min(w, h)) / 2, (w + min(w, h)) / 2, (h + min(w, h)) / 2]
    classes = Counter()
    for entry in manifest["splits"]["train"]["shards"]:
        classes.update({int(c): n for c, n in entry.get("classes", {}).items()})
    assert classes == Counter(r.expression for r in splits["train"] if r.reject is None and r.expression is not None)


def test_exif_orientation_is_applied_before_the_crop(converted):
    folder, splits = converted["save_to_disk"]
    row = next(i for i, r in enumerate(splits["train"]) if r.extra.get("orig_size") == [40, 60])
    crop = np.asarray(Image.open(io.BytesIO(read_samples(folder)[f"fer-train_{row}"]["jpg"])).convert("RGB")).astype(int)
    # displayed 40 wide, 60 high, red above blue: the centred 40x40 square is red on top, blue below
    assert np.abs(crop[4, 16] - RED).max() <= 30 and np.abs(crop[27, 16] - BLUE).max() <= 30


def test_the_stream_reads_them_unchanged_for_fine_tuning_and_refuses_held_out_pretraining(converted):
    folder, splits = converted["save_to_disk"]
    label_map = {6: 0, 1: 1, 0: 2}
    stream = FaceStream(build_sources({"fer": str(folder)}, splits=["train"]),
                        StreamConfig(mode="exact", batch_size=2, shuffle=False, num_workers=0,
                                     augment=Augment(kind="resize", size=16), label_map=label_map))
    streamed = {k: int(lab) for b in stream for k, lab, ok in zip(b["key"], b["label"], b["valid"]) if ok}
    assert streamed == {f"fer-train_{i}": label_map[r.expression] for i, r in enumerate(splits["train"])
                        if r.reject is None and r.expression is not None}
    with pytest.raises(UserError, match="held out"):
        build_sources({"fer": {"path": str(folder), "splits": ["test"]}}, pretraining=True)


def test_leakage_guard_finds_a_held_out_face_copied_into_training(tmp_path):
    from datasets import Dataset, DatasetDict, Image as HFImage

    test = [encoded(textured(i), "PNG") for i in range(3)]
    copy = encoded(textured(0).resize((80, 80)), "JPEG", quality=80)  # test[0] rescaled and re-encoded
    train = [encoded(textured(10 + i), "JPEG", quality=90) for i in range(4)] + [copy]
    split = lambda images: Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in images]}).cast_column(
        "image", HFImage())
    DatasetDict({"train": split(train), "validation": split(test)}).save_to_disk(str(tmp_path / "saved"))
    assert main(["hf", str(tmp_path / "saved"), "--name", "faces", "--out", str(tmp_path / "shards"),
                 "--size", "32", "--workers", "1", "--no-progress"]) == 0
    out = tmp_path / "exclusions.txt"
    assert main(["leakage", "--holdout", str(tmp_path / "shards"), "--against", str(tmp_path / "shards"),
                 "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    assert leakage.read_exclusions(out) == {"faces-train_4"}
    stream = FaceStream(build_sources({"f": str(tmp_path / "shards")}, pretraining=True),
                        StreamConfig(batch_size=4, batches_per_epoch=6, num_workers=0,
                                     augment=Augment(size=16), exclude=[str(out)]))
    assert {k for b in stream for k in b["key"]} == {f"faces-train_{i}" for i in range(4)}


def test_plain_parquet_with_raw_bytes_and_text_labels_through_the_command(tmp_path, capsys):
    images = [encoded(textured(i), "JPEG", quality=90) for i in range(3)] + [b"garbage"]
    write_plain_parquet(tmp_path / "in" / "emotions.parquet", images, ["Sad", "happy", None, "sad"],
                        valence=[0.5, float("nan"), -0.25, 0.0])
    args = ["hf", str(tmp_path / "in" / "emotions.parquet"), "--image-column", "img_bytes", "--label-column",
            "emotion", "--label-map", "sad=2,happy=happy", "--out", str(tmp_path / "out"), "--size", "32",
            "--keep-columns", "valence", "--workers", "1", "--no-progress", "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "emotions train: 3 faces" in printed and "1 unreadable-image" in printed and "expression missing for 1" in printed
    samples = read_samples(tmp_path / "out")
    assert {k: (s["meta"]["label"], s["cls"], s["meta"]["valence"]) for k, s in samples.items()} == {
        "emotions-train_0": ("Sad", 2, 0.5), "emotions-train_1": ("happy", 1, None), "emotions-train_2": (None, None, -0.25)}
    written = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.tar")}
    assert main(args) == 0  # a re-run keeps every shard
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.tar")} == written
    with pytest.raises(UserError, match="another label_map"):
        main(args[:6] + ["--label-map", "sad=4,happy=1"] + args[8:])


def test_an_imagefolder_of_class_folders_reads_its_files_and_lists_a_vanished_one(tmp_path):
    """`split/<class>/*.jpg` repacks: load_dataset reads the folder names as a ClassLabel and
    keeps the images as paths; a file gone before conversion is a missing-image reject."""
    files = {"train/sad/a.jpg": RED, "train/happy/b.png": BLUE, "train/happy/c.jpg": RED, "test/sad/d.jpg": BLUE}
    for name, colour in files.items():
        (tmp_path / "faces" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (36, 30), colour).save(tmp_path / "faces" / name)
    scan = hf.scan(str(tmp_path / "faces"), hf.Columns(label="label", label_map=parse_label_map("sad=2,happy=1")),
                   cache_dir=str(tmp_path / "cache"))
    assert scan.holdout_splits == {"test"} and len(scan.items) == 4
    (tmp_path / "faces" / "train/happy/c.jpg").unlink()
    manifest = build_shards(scan, tmp_path / "out", SETTINGS, workers=1, progress=False)
    assert manifest["rejects"]["counts"] == {"missing-image": 1}
    samples = {s["meta"]["image_path"].split("faces/")[-1]: s for s in read_samples(tmp_path / "out").values()}
    assert set(samples) == set(files) - {"train/happy/c.jpg"}
    for name, sample in samples.items():
        assert sample["cls"] == (2 if "/sad/" in name else 1) and sample["meta"]["label_name"] in name
        assert np.abs(centre_rgb(sample["jpg"]) - files[name]).max() <= 12


def test_without_a_map_the_datasets_own_labels_are_kept(converted):
    saved = str(converted["save_to_disk"][0].parent / "saved")
    rows = planted_rows()
    metas = {item.key: item.meta for item in hf.scan(saved, hf.Columns(label="label")).items}
    # without --box-column every row is an item: the images are judged when they are decoded
    assert set(metas) == {f"saved-{split}_{i}" for split, planted in rows.items() for i in range(len(planted))}
    for split, planted in rows.items():
        for i, row in enumerate(planted):
            meta = metas[f"saved-{split}_{i}"]
            if isinstance(row.label, str):
                assert meta == {"row": i, "label": NAMES.index(row.label), "label_name": row.label}
            else:  # null and ClassLabel's -1: missing, said why, never an expression
                assert meta == {"row": i, "label": None, "label_missing": "column 'label' is empty in this row"}


def test_held_out_splits_by_name_or_as_asked(converted):
    saved = str(converted["save_to_disk"][0].parent / "saved")
    assert hf.scan(saved).holdout_splits == {"test"}
    assert hf.scan(saved, holdout=["train"]).holdout_splits == {"train"}
    assert hf.scan(saved, holdout=["none"]).holdout_splits == set()


@pytest.mark.parametrize("extra, message", [
    (["--image-column", "img"], "split train: no column 'img'; available: image (Image), label (ClassLabel angry, "
                                "happy, neutral, contempt), box ("),
    (["--image-column", "label"], "column 'label' (ClassLabel angry, happy, neutral, contempt) cannot be images"),
    (["--split", "dev"], "no split dev; available: train, test"),
    (["--holdout", "tset"], "--holdout tset: no such split; available: train, test"),
    (["--label-column", "label", "--label-map", "sad=sad"], "--label-map names none of the labels in column "
                                                            "'label' (found: angry, contempt, happy, neutral"),
    (["--label-column", "label", "--label-map", "angry=furious"], "'furious' (for 'angry') is not an AffectNet expression"),
    (["--label-map", "angry=anger"], "--label-map needs --label-column"),
    (["--keep-columns", "label"], "--keep-columns label: the sample JSON already has a field of that name"),
    (["--label-column", "label", "--box-column", "bbox"], "no column 'bbox'"),
])
def test_bad_input_is_one_line_naming_what_is_there(converted, tmp_path, capsys, extra, message):
    saved = converted["save_to_disk"][0].parent / "saved"
    status = run_cli(main, ["hf", str(saved), "--out", str(tmp_path / "o"), "--no-progress", *extra], prog="face-shards")
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1 and err.startswith("face-shards: error: "), err
    assert message in err, err


def test_paths_that_are_no_dataset_are_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "cut.parquet").write_bytes(b"PAR1 cut short")
    for location, message in ((tmp_path / "missing", "no such file or folder, and not a Hub repo id"),
                              (tmp_path / "notes.txt", "not a .parquet or .arrow file"),
                              (tmp_path / "cut.parquet", "cut.parquet: datasets cannot load it (")):
        assert run_cli(main, ["hf", str(location), "--out", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c")],
                       prog="face-shards") == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
