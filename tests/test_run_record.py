"""shared/run_record.py: the run.json every stage writes (relative paths, inputs fingerprinted
by their declaring files, the built-in synthetic data said to be synthetic, stable bytes)."""
from __future__ import annotations

import json
import shutil

import pytest

from shared import builtin_data
from shared.errors import UserError
from shared.provenance import sha256_file
from shared.run_record import (declared, encoder_input, portable, read_run_record, relative, run_of, shards_input,
                               write_run_record)


def test_portable_makes_local_paths_relative_to_the_run_folder(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "a"
    (tmp_path / "data" / "x").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    config = {"out": str(run), "data": {"shards": str(tmp_path / "data" / "x"), "pattern": f"{tmp_path}/s-{{0..3}}.tar",
                                        "here": "data/x", "url": "https://host/s-{0..3}.tar", "name": "vit_base",
                                        "n": 3, "flag": None, "list": [str(tmp_path / "data")]}}
    assert portable(config, run) == {"out": ".", "data": {
        "shards": "../../data/x", "pattern": "../../s-{0..3}.tar", "here": "../../data/x",
        "url": "https://host/s-{0..3}.tar", "name": "vit_base", "n": 3, "flag": None, "list": ["../../data"]}}
    assert relative(tmp_path / "runs", run) == ".."


def test_shards_are_fingerprinted_by_their_manifest_and_name_their_dataset(shards, tmp_path):
    entry = shards_input(str(shards["celeba"]), tmp_path)
    manifest = json.loads((shards["celeba"] / "manifest.json").read_text())
    assert entry["sha256"] == {"manifest.json": sha256_file(shards["celeba"] / "manifest.json")}
    assert entry["dataset"] == "celeba" and entry["source"] == manifest["source"] and "synthetic" not in entry
    assert entry["splits"] == {s: e["samples"] for s, e in manifest["splits"].items() if not e["holdout"]}
    assert entry["path"] == relative(shards["celeba"], tmp_path) and not entry["path"].startswith("/")
    assert shards_input("s3://bucket/celeba-{0..9}.tar", tmp_path) == {"kind": "face shards",
                                                                      "location": "s3://bucket/celeba-{0..9}.tar"}


def test_built_in_data_is_recorded_as_synthetic_without_a_dataset(shards, tmp_path):
    """The built-in faces are converted by the real converters (their manifests say celeba):
    the marker of the built-in root, not the manifest, decides."""
    base = tmp_path / "builtin"
    shutil.copytree(shards["celeba"], base / "shards" / "celeba")
    (base / "shards" / ".complete").write_text("")
    assert not builtin_data.is_builtin(base / "shards" / "celeba")  # no marker yet: real data as far as we know
    builtin_data._mark(base / "shards")
    entry = shards_input(str(base / "shards" / "celeba"), tmp_path)
    assert entry["synthetic"] is True and "dataset" not in entry and entry["source"] == "celeba"


def test_encoders_name_the_run_that_declares_them(tiny_encoder, tmp_path):
    run = tmp_path / "stage2"
    assert encoder_input("hf-hub:me/mae", run) == {"kind": "encoder", "name": "hf-hub:me/mae"}
    maker = tmp_path / "stage1"
    shutil.copytree(tiny_encoder, maker / "export" / "encoder")
    assert run_of(maker / "export" / "encoder") is None  # no run.json: not traced
    write_run_record(maker, "pretrain", config={}, inputs={}, files={},
                     weights={"final": {"about": "x", "selected": False,
                                        "files": declared(maker, {"encoder": ("export/encoder", "encoder")})}},
                     default="final")
    entry = encoder_input(str(maker / "export" / "encoder"), run)
    assert entry == {"kind": "encoder folder", "path": "../stage1/export/encoder", "run": "../stage1",
                     "sha256": {"config.json": sha256_file(tiny_encoder / "config.json")}}


def test_the_record_is_sorted_atomic_and_read_back(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    files = declared(tmp_path, {"log": ("metrics.jsonl", "log"), "gone": ("missing.png", "figures")})
    assert files == {"log": {"path": "metrics.jsonl", "kind": "log"}}  # only what exists is declared
    path = write_run_record(tmp_path, "features", config={"b": 1, "a": str(tmp_path / "x")}, inputs={}, files=files,
                            metrics={"z": 1.5, "a": float("nan")})
    text = path.read_text()
    assert list(json.loads(text)) == sorted(json.loads(text)) and str(tmp_path) not in text
    assert not list(tmp_path.glob("*.tmp"))
    record = read_run_record(tmp_path)
    assert record["stage"] == {"name": "features", "number": "3a", "title": "feature extraction (the feature store)"}
    assert record["config"] == {"a": "x", "b": 1} and record["software"]["python"]
    write_run_record(tmp_path, "features", config={"b": 1, "a": str(tmp_path / "x")}, inputs={}, files=files,
                     metrics={"z": 1.5, "a": float("nan")})
    assert path.read_text() == text
    with pytest.raises(ValueError, match="stage"):
        write_run_record(tmp_path, "stage9", config={}, inputs={}, files={})
    path.write_text("{")
    with pytest.raises(UserError, match="not readable JSON"):
        read_run_record(tmp_path)
    with pytest.raises(UserError, match="no run.json"):
        read_run_record(tmp_path / "nowhere")
