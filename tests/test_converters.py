"""face-shards converters on the tiny raw layouts: counts, splits, labels, crops, rejects, resume."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from shared.errors import UserError
from shared.shards.sources import SOURCES
from shared.shards.writer import ShardSettings, build_shards
from shared.synthetic import write_affectnet, write_celeba
from conftest import CONVERTERS, SMALL
from shard_utils import centre_rgb, read_samples

ALL = list(CONVERTERS)


@pytest.mark.parametrize("name", ALL)
def test_counts_splits_and_rejects_match_what_was_planted(raw, shards, name):
    planted = raw[name]
    manifest = json.loads((shards[name] / "manifest.json").read_text())
    assert manifest["complete"]
    assert {s: e["samples"] for s, e in manifest["splits"].items()} == planted.expected
    for split, entry in manifest["splits"].items():
        assert sum(s["samples"] for s in entry["shards"]) == entry["samples"]
        assert all(s["samples"] <= SMALL.shard_size for s in entry["shards"])
    expected_rejects = {reason: len(paths) for reason, paths in planted.rejects.items()}
    assert manifest["rejects"]["counts"] == expected_rejects
    listed = (shards[name] / "rejects.csv").read_text().splitlines()[1:]
    for reason, paths in planted.rejects.items():
        for path in paths:
            assert any(line.startswith(path + ",") and f",{reason}," in line for line in listed), (reason, path)


@pytest.mark.parametrize("name", ALL)
def test_every_sample_has_its_labels_and_a_dot_free_key(raw, shards, name):
    planted = raw[name]
    samples = read_samples(shards[name])
    assert {s["meta"]["path"] for s in samples.values()} == set(planted.faces)
    for key, sample in samples.items():
        assert "." not in key and key == sample["meta"]["key"]
        face = planted.faces[sample["meta"]["path"]]
        assert sample["meta"]["split"] == face["split"]
        assert sample["shard"].split("-")[-2] == face["split"]
        for field in ("expression", "identity", "photo_taken", "age", "gender"):
            if field in face:
                assert sample["meta"][field] == face[field], (key, field)
        if "expression" in face:
            assert sample["cls"] == face["expression"]


@pytest.mark.parametrize("name", ALL)
def test_crops_are_square_and_centred_on_the_face(raw, shards, name):
    planted = raw[name]
    for sample in read_samples(shards[name]).values():
        img = Image.open(io.BytesIO(sample["jpg"]))
        assert img.size == (SMALL.size, SMALL.size) and img.mode == "RGB"
        skin = np.array(planted.faces[sample["meta"]["path"]]["skin"])
        assert np.abs(centre_rgb(sample["jpg"]) - skin).max() < 40, sample["meta"]["path"]


def test_affectnet_box_margin_and_labels(raw, shards):
    planted = raw["affectnet"]
    samples = read_samples(shards["affectnet"])
    boxed = 0
    for sample in samples.values():
        meta, face = sample["meta"], planted.faces[sample["meta"]["path"]]
        if face["box"] is None:  # NaN box: the whole image's centred square
            w, h = meta["orig_size"]
            side = min(w, h)
            assert meta["crop_box"] == pytest.approx([(w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2])
            continue
        boxed += 1
        x, y, w, h = face["box"]
        side = max(w, h) * (1 + 2 * SMALL.margin)
        assert meta["crop_box"] == pytest.approx([x + w / 2 - side / 2, y + h / 2 - side / 2,
                                                  x + w / 2 + side / 2, y + h / 2 + side / 2], abs=0.01)
        assert len(meta["landmarks"]) == 68
        assert meta["valence"] == (None if face["valence"] == -2 else pytest.approx(face["valence"]))
        assert meta["holdout"] is (meta["split"] == "val")
    assert boxed > 10
    assert {s["meta"]["box"] is None for s in samples.values()} == {True, False}  # NaN boxes kept


def test_celeba_landmarks_and_imdb_dates(raw, shards):
    for sample in read_samples(shards["celeba"]).values():
        face = raw["celeba"].faces[sample["meta"]["path"]]
        assert sample["meta"]["landmarks"] == [list(p) for p in face["landmarks"]]
    for sample in read_samples(shards["imdb_wiki"]).values():
        face = raw["imdb_wiki"].faces[sample["meta"]["path"]]
        assert sample["meta"]["dob"] == face["dob"]


def test_manifest_hashes_and_provenance(shards):
    import hashlib
    manifest = json.loads((shards["celeba"] / "manifest.json").read_text())
    entry = manifest["splits"]["train"]["shards"][0]
    assert hashlib.sha256((shards["celeba"] / entry["name"]).read_bytes()).hexdigest() == entry["sha256"]
    assert set(manifest["inputs"]) >= {"list_eval_partition.txt", "list_landmarks_align_celeba.txt"}
    assert manifest["settings"]["size"] == SMALL.size and manifest["created_by"]["package"] == "affect-lineage"


def test_rerun_keeps_complete_shards_and_rewrites_damaged_ones(raw, shard_copy):
    out = shard_copy("celeba")
    names = sorted(p.name for p in out.glob("*.tar"))
    damaged, deleted, kept = names[0], names[1], names[2:]
    (out / damaged).write_bytes(b"not a tar")
    (out / deleted).unlink()
    before = {n: os.stat(out / n).st_mtime_ns for n in kept}
    original = json.loads((out / "manifest.json").read_text())
    scan = SOURCES["celeba"].scan(raw["celeba"].root)
    manifest = build_shards(scan, out, SMALL, workers=1, progress=False)
    assert {n: os.stat(out / n).st_mtime_ns for n in kept} == before  # not rewritten
    assert manifest["splits"] == original["splits"]  # same content, same hashes
    assert not list(out.glob(".*.partial"))


def test_changed_settings_refuse_to_mix_into_old_shards(raw, shard_copy):
    out = shard_copy("celeba")
    scan = SOURCES["celeba"].scan(raw["celeba"].root)
    with pytest.raises(UserError, match="--overwrite"):
        build_shards(scan, out, ShardSettings(size=96, shard_size=SMALL.shard_size), workers=1, progress=False)


def test_headerless_and_headed_validation_lists_parse_alike(tmp_path):
    a = write_affectnet(tmp_path / "a", val_header=False)
    b = write_affectnet(tmp_path / "b", val_header=True)
    scan_a, scan_b = SOURCES["affectnet"].scan(a.root), SOURCES["affectnet"].scan(b.root)
    assert [i.key for i in scan_a.items] == [i.key for i in scan_b.items]


def test_missing_list_file_is_one_clear_error(tmp_path):
    planted = write_celeba(tmp_path / "c")
    (planted.root / "list_eval_partition.txt").unlink()
    with pytest.raises(UserError, match="list_eval_partition.txt: missing; expected CelebA's partition list"):
        SOURCES["celeba"].scan(planted.root)


def test_malformed_list_file_is_one_clear_error(tmp_path):
    planted = write_affectnet(tmp_path / "a")
    lists = planted.root / "Manually_Annotated_file_lists"
    (lists / "validation.csv").write_text("this;is;not\nan;affectnet;list\n")
    with pytest.raises(UserError, match="validation.csv: no row has AffectNet's 9 columns"):
        SOURCES["affectnet"].scan(planted.root)
    (lists / "training.csv").write_text("path,x,y\n1/a.jpg,1,2\n")
    with pytest.raises(UserError, match="training.csv"):
        SOURCES["affectnet"].scan(planted.root)


def test_cli_bad_input_is_one_line_with_status_2(tmp_path):
    planted = write_celeba(tmp_path / "c")
    (planted.root / "list_eval_partition.txt").unlink()
    proc = subprocess.run([sys.executable, "-m", "shared.shards", "celeba", str(planted.root), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "list_eval_partition.txt" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_converts_with_progress_and_summary(raw, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "shared.shards", "casia-webface", str(raw["casia_rec"].root),
                           "--out", str(tmp_path / "o"), "--size", "48", "--shard-size", "4", "--workers", "2"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert f"casia_webface train: {raw['casia_rec'].expected['train']} faces in 3 shards" in proc.stdout  # 9 planned, 4 per shard
    assert "img" in proc.stderr  # the tqdm bar
    samples = read_samples(tmp_path / "o")
    assert {s["meta"]["identity"] for s in samples.values()} == {f["identity"] for f in raw["casia_rec"].faces.values()}
