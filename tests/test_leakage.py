"""The leakage guard finds re-encoded copies of AffectNet validation faces in pretraining shards."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import numpy as np
from PIL import Image, ImageEnhance

from shared.face_crop import face_square, xywh_to_xyxy
from shared.shards.items import sample_key
from shared.shards.sources import SOURCES
from shared.shards.writer import build_shards
from shared.stream import Augment, FaceStream, StreamConfig, build_sources
from shared.synthetic import write_affectnet, write_casia_folders
from conftest import SMALL


def _reencoded(img: Image.Image, quality: int, brightness: float) -> bytes:
    out = io.BytesIO()
    ImageEnhance.Brightness(img.convert("RGB")).enhance(brightness).save(out, "JPEG", quality=quality)
    return out.getvalue()


def _plant(tmp_path):
    """AffectNet + CASIA with two planted copies of validation faces; returns (roots, planted keys)."""
    aff = write_affectnet(tmp_path / "raw_a", seed=5)
    casia = write_casia_folders(tmp_path / "raw_c", seed=5)
    val = [(p, f) for p, f in aff.faces.items() if f["split"] == "val" and f["box"] is not None]
    (path_a, _), (path_c, face_c) = val[0], val[1]
    images = aff.image_dir

    # 1) the same photo listed again in training.csv, re-encoded and brightened
    copy_rel = "9/" + "e" * 40 + ".jpg"
    (images / "9").mkdir()
    (images / copy_rel).write_bytes(_reencoded(Image.open(images / path_a), 70, 1.05))
    lists = aff.root / "Manually_Annotated_file_lists"
    with open(lists / "validation.csv", newline="") as f:
        row = next(r for r in csv.reader(f) if r[0] == path_a)
    with open(lists / "training.csv", "a", newline="") as f:
        csv.writer(f).writerow([copy_rel] + row[1:])

    # 2) the face cropped out of the photo and filed under a new CASIA identity at 250x250
    img = Image.open(images / path_c)
    square = face_square(xywh_to_xyxy(face_c["box"]), SMALL.margin, *img.size)
    crop = img.convert("RGB").crop(tuple(round(v) for v in square)).resize((250, 250), Image.BICUBIC)
    (casia.image_dir / "9999999").mkdir()
    (casia.image_dir / "9999999" / "001.jpg").write_bytes(_reencoded(crop, 85, 0.97))
    planted = {sample_key("affectnet", copy_rel), sample_key("casia_webface", "9999999/001.jpg")}
    return aff.root, casia.root, planted


def test_guard_finds_exactly_the_planted_copies_and_the_stream_skips_them(tmp_path):
    aff_root, casia_root, planted = _plant(tmp_path)
    build_shards(SOURCES["affectnet"].scan(aff_root), tmp_path / "a", SMALL, workers=1, progress=False)
    build_shards(SOURCES["casia-webface"].scan(casia_root), tmp_path / "c", SMALL, workers=1, progress=False)
    out = tmp_path / "exclusions.txt"
    proc = subprocess.run([sys.executable, "-m", "shared.shards", "leakage", "--holdout", str(tmp_path / "a"),
                           "--against", str(tmp_path / "a"), str(tmp_path / "c"), "--out", str(out),
                           "--workers", "2", "--no-progress"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("2 of ")
    keys = {line for line in out.read_text().splitlines() if line and not line.startswith("#")}
    assert keys == planted
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["excluded"] == 2 and all(m["distance"] <= report["max_distance"] for m in report["matches"])
    assert {m["holdout_key"].split("-")[0] for m in report["matches"]} == {"affectnet"}

    sources = build_sources({"a": str(tmp_path / "a"), "c": str(tmp_path / "c")}, pretraining=True)
    stream = FaceStream(sources, StreamConfig(batch_size=16, batches_per_epoch=20, num_workers=0,
                                              augment=Augment(size=16), exclude=[str(out)]))
    streamed = {k for batch in stream for k in batch["key"]}
    assert len(streamed) > 20 and not streamed & planted


def test_distinct_faces_are_far_apart(shards):
    from shared.shards.leakage import find_matches, hash_shards
    folder = shards["celeba"]
    names = [(str(folder), p.name) for p in sorted(folder.glob("*.tar"))]
    keys, hashes = hash_shards(names, workers=1, progress=False, what="t")
    matches = [(i, j) for i, j, _ in find_matches(hashes, hashes, 6) if i != j]
    assert len(keys) == len(set(keys)) > 20 and matches == []
    assert np.bitwise_count(hashes[0] ^ hashes[1]) > 6
