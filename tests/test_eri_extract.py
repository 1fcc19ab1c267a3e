"""Stage 3a end to end: every extraction step over a tiny Hume-Reaction dataset (real h264/aac
videos of real face photos), with tiny models loaded through from_pretrained; resume, stale
caches, and two processes."""
from __future__ import annotations

import csv
import json
import os

import pytest
import torch
from safetensors import safe_open

from run_utils import run_stage
from shared.provenance import sha256_file
from shared.run_record import relative
from shared.synthetic.reactions import write_hume_reaction
from tiny_hf import save_deberta, save_hubert, save_speech2text

SCRIPT = "eri_downstream/extract.py"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eri")
    planted = write_hume_reaction(root / "hume", seed=3)
    models = {"hubert": save_hubert(root / "hubert"), "deberta": save_deberta(root / "deberta"),
              "s2t": save_speech2text(root / "s2t")}
    return planted, models, root


def args(planted, models, store, encoder, *extra):
    return ["--data", str(planted.root), "--store", str(store), "--encoder", str(encoder), "--fps", "5",
            "--audio-model", str(models["hubert"]), "--asr-model", str(models["s2t"]),
            "--text-model", str(models["deberta"]), *extra]


def features(store, step, file_id):
    with safe_open(str(store / step / f"{file_id}.safetensors"), framework="pt") as f:
        return f.get_tensor("features"), f.metadata()


def test_all_steps_then_resume_then_stale_caches(setup, tiny_encoder, tmp_path):
    planted, models, _ = setup
    store = tmp_path / "store"
    ids = [i for split in planted.ids.values() for i in split]
    proc = run_stage(SCRIPT, "all", *args(planted, models, store, tiny_encoder))
    log = proc.stderr

    with open(store / "videos.csv", newline="") as f:
        assert sorted(row["file_id"] for row in csv.DictReader(f)) == sorted(ids)
    for step in ("faces", "visual", "audio", "transcripts", "text"):
        assert (store / f"{step}_failures.csv").read_text().strip() == "file_id,reason", step

    for file_id in ids:
        track = json.loads(_tar_member(store / "faces" / f"{file_id}.tar", "track.json"))
        visual, meta = features(store, "visual", file_id)
        if file_id in planted.no_face:  # reported, never fatal: zeros
            assert track["status"] == "no-face" and meta["status"] == "no-face"
            assert visual.shape == (1, 48) and not visual.any()
        else:
            assert track["status"] == "ok" and sum(track["detected"]) >= len(track["detected"]) // 2
            assert visual.shape == (len(track["detected"]), 48) and visual.dtype == torch.float16
        audio, meta = features(store, "audio", file_id)
        assert audio.shape[1] == 32 and abs(audio.shape[0] - planted.seconds * 50) <= 3, file_id
        text, meta = features(store, "text", file_id)
        assert text.shape[1] == 32 and meta["transcript_sha1"]
    assert "no-face" in log
    record = json.loads((store / "run.json").read_text())  # stage 3a's record, in the store
    assert record["stage"]["number"] == "3a" and str(tmp_path) not in (store / "run.json").read_text()
    videos = record["inputs"]["videos"]
    assert videos["dataset"] == "hume-reaction" and videos["layout"] == "ABAW5" and "synthetic" not in videos
    assert videos["sha256"] == {"data_info.csv": sha256_file(planted.root / "data_info.csv")}
    assert record["inputs"]["features.visual"]["path"] == relative(tiny_encoder, store)
    assert record["metrics"]["videos"] == {s: len(v) for s, v in planted.ids.items() if v}
    assert record["metrics"]["feature_files"] == {"visual": len(ids), "audio": len(ids), "text": len(ids)}
    assert record["outputs"]["files"]["table"] == {"path": "videos.csv", "kind": "table"}

    # resume: nothing is redone, and the record is the same
    stamps = {p: os.stat(p).st_mtime_ns for p in store.rglob("*.safetensors")}
    first = (store / "run.json").read_bytes()
    again = run_stage(SCRIPT, "all", *args(planted, models, store, tiny_encoder)).stderr
    assert f"{len(ids)} already done" in again and (store / "run.json").read_bytes() == first
    assert {p: os.stat(p).st_mtime_ns for p in store.rglob("*.safetensors")} == stamps

    # another encoder makes the visual cache stale; an edited transcript, that video's text
    other = tmp_path / "other_encoder"
    import shutil
    shutil.copytree(tiny_encoder, other)
    weights = other / "model.safetensors"
    from safetensors.torch import load_file, save_file
    tensors = load_file(weights)
    tensors["norm.weight"] = tensors["norm.weight"] * 2
    save_file(tensors, weights)
    with open(store / "transcripts.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rows[0]["text"] = "a corrected transcript"
    with open(store / "transcripts.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file_id", "text"])
        writer.writeheader()
        writer.writerows(rows)
    run_stage(SCRIPT, "visual", *args(planted, models, store, other))
    run_stage(SCRIPT, "text", *args(planted, models, store, other))
    changed = {p for p, t in stamps.items() if os.stat(p).st_mtime_ns != t}
    assert {p for p in changed if p.parent.name == "visual"} == set((store / "visual").glob("*.safetensors"))
    assert {p.stem for p in changed if p.parent.name == "text"} == {rows[0]["file_id"]}
    assert {p.parent.name for p in changed} == {"visual", "text"}


def test_two_processes_share_the_videos_and_write_what_one_writes(setup, tiny_encoder, tmp_path):
    planted, models, _ = setup
    one, two = tmp_path / "one", tmp_path / "two"
    run_stage(SCRIPT, "all", *args(planted, models, two, tiny_encoder), processes=2)
    run_stage(SCRIPT, "all", *args(planted, models, one, tiny_encoder))
    ids = sorted(i for split in planted.ids.values() for i in split)
    for step in ("visual", "audio", "text"):
        assert sorted(p.stem for p in (two / step).glob("*.safetensors")) == ids, step
        for file_id in ids:
            (a, meta_a), (b, meta_b) = features(one, step, file_id), features(two, step, file_id)
            assert a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=1e-3), (step, file_id)
            assert meta_a["status"] == meta_b["status"]
    for file_id in ids:
        assert _tar_member(one / "faces" / f"{file_id}.tar", "track.json") == \
            _tar_member(two / "faces" / f"{file_id}.tar", "track.json")
    assert (one / "transcripts.csv").read_text() == (two / "transcripts.csv").read_text()
    with open(two / "videos.csv", newline="") as f:
        assert sorted(row["file_id"] for row in csv.DictReader(f)) == ids


def test_bad_input_is_one_line(tmp_path):
    proc = run_stage(SCRIPT, "faces", "--data", str(tmp_path), "--store", str(tmp_path / "s"), check=False)
    assert proc.returncode == 2 and "data_info.csv" in proc.stderr and "Traceback" not in proc.stderr


def _tar_member(path, name):
    import tarfile
    with tarfile.open(path) as tar:
        return tar.extractfile(name).read()
