"""Fault injection in the data: corrupt, empty and missing shards, malformed list files, unusable
videos and NaN features. docs/faults.md lists each fault, what the suite does and the test."""
from __future__ import annotations

import argparse
import csv
import json
import math
import tarfile
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
import torch
from accelerate import PartialState
from safetensors.torch import save_file

from eri_downstream import extract
from eri_downstream.data import FeatureDataset
from eri_downstream.dataset import VideoEntry, write_table
from eri_downstream import steps
from eri_downstream.steps import Step, save_features
from eri_downstream.store import FeatureStore
from shared.errors import RunError, UserError, one_line
from shared.shards.sources import SOURCES
from shared.stream import FaceStream, build_sources, resolve
from shared.stream.reading import ErrorLog, read_shard
from shared.synthetic import write_affectnet, write_celeba
from shared.training.checkpoint import Checkpointer
from shared.training.loop import train
from tiny_hf import save_hubert
from fault_utils import accelerator, garble_first_jpeg, stream_config


# -- shards and the stream --------------------------------------------------------------------
def test_corrupt_jpegs_and_a_truncated_tar_are_counted_in_the_training_metrics(shard_copy, tmp_path, caplog):
    folder = shard_copy("celeba")
    first, second = sorted(folder.glob("celeba-train-*.tar"))[:2]
    bad_key = garble_first_jpeg(first)
    second.write_bytes(second.read_bytes()[: second.stat().st_size // 2])
    stream = FaceStream(build_sources({"celeba": str(folder)}, splits=["train"]),
                        stream_config(mode="exact", shuffle=False))
    acc, model, optimizer = accelerator(torch.nn.Linear(3, 1))

    def loss_fn(model, batch, micro_step):
        x = batch["image"].float().mean((2, 3)) / 255
        return model(x).pow(2).mean(), {}

    steps = len(stream)
    train(acc, model, optimizer, stream, loss_fn, total_steps=steps, lr_at=lambda s: 0.1,
          checkpointer=Checkpointer(acc, tmp_path), config={}, samples_per_step=4, log_every=1,
          save_every=1000, metrics_file=tmp_path / "metrics.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == steps and rows[-1]["skipped_samples"] == stream.errors >= 2
    assert [r["skipped_samples"] for r in rows] == sorted(r["skipped_samples"] for r in rows)  # a running count
    assert any(bad_key in m for m in stream.error_messages)
    assert any(second.name in m for m in stream.error_messages)
    assert f"skipped {stream.errors} unreadable samples" in caplog.text


def test_empty_shards_are_counted_and_skipped(shard_copy, tmp_path):
    zero, empty = tmp_path / "zero.tar", tmp_path / "empty.tar"
    zero.write_bytes(b"")
    tarfile.open(empty, "w").close()
    for shard in (zero, empty):
        errors = ErrorLog()
        assert list(read_shard(str(shard), errors)) == [] and errors.count == 1
        assert str(shard) in errors.messages[0]
    assert "empty shard (no samples)" in errors.messages[0]

    # among good shards (URL patterns, drawn alike): skipped, every batch still full
    folder = shard_copy("celeba")
    good = sorted(str(p) for p in folder.glob("celeba-train-*.tar"))
    stream = FaceStream([resolve("mix", [good[0], str(zero), str(empty)])], stream_config(batches_per_epoch=10))
    keys = [k for batch in stream for k in batch["key"]]
    assert len(keys) == 40 and all(keys) and stream.errors >= 2

    # listed in the manifest with samples, found empty: exact mode pads and counts them
    listed = json.loads((folder / "manifest.json").read_text())["splits"]["train"]["shards"][0]
    (folder / listed["name"]).write_bytes(b"")
    exact = FaceStream(build_sources({"celeba": str(folder)}, splits=["train"]), stream_config(mode="exact"))
    batches = list(exact)
    assert len(batches) == len(exact) and exact.errors >= listed["samples"]
    assert sum(int(b["valid"].sum()) for b in batches) == exact.total - listed["samples"]

    # nothing but empty shards: one clear error, also when raised inside a DataLoader worker
    hopeless = FaceStream([resolve("void", [str(zero), str(empty)])], stream_config(num_workers=1))
    with pytest.raises(RunError) as info:
        next(iter(hopeless))
    assert one_line(info.value).startswith("50 shards in a row gave no sample (last: ")
    assert "Traceback" not in one_line(info.value)


def test_missing_or_sampleless_shard_sources_are_one_clear_error(shard_copy, tmp_path):
    with pytest.raises(UserError, match=r"source celeba: .*nope does not exist; expected a shard folder"):
        build_sources({"celeba": str(tmp_path / "nope")})
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match=r"plain/manifest.json: no shard manifest"):
        build_sources({"faces": str(tmp_path / "plain")})
    with pytest.raises(UserError, match=r"none of its 3 shard file\(s\) exists"):
        resolve("faces", str(tmp_path / "faces-{000..002}.tar"))
    folder = shard_copy("celeba")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["splits"]["test"]["samples"] = 0  # every face of the split rejected at conversion
    for shard in manifest["splits"]["test"]["shards"]:
        shard["samples"] = 0
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"has no samples in split\(s\) test \(samples per split: .*test: 0"):
        build_sources({"celeba": str(folder)}, splits=["test"])
    (folder / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))  # a conversion cut short
    with pytest.raises(UserError, match=r"the conversion has not finished .*re-run face-shards to resume it"):
        build_sources({"celeba": str(folder)})


def test_list_files_in_the_wrong_format_name_file_line_and_format(tmp_path):
    affectnet = write_affectnet(tmp_path / "affectnet").root
    lists = affectnet / "Manually_Annotated_file_lists"
    with open(lists / "validation.csv", newline="") as f:  # saved again with ';' as separator
        rows = list(csv.reader(f))
    with open(lists / "validation.csv", "w", newline="") as f:
        csv.writer(f, delimiter=";").writerows(rows)
    with pytest.raises(UserError) as info:
        SOURCES["affectnet"].scan(affectnet)
    assert str(info.value).startswith(f"{lists / 'validation.csv'}: no row has AffectNet's 9 columns; line 1 has 1 "
                                      "and looks separated by semicolons; expected 9 comma-separated columns "
                                      "subDirectory_filePath,face_x,")
    (lists / "training.csv").write_text("subDirectory_filePath,face_x,face_y,expression\n1/a.jpg,1,2,3\n")
    with pytest.raises(UserError, match=r"training.csv line 1: header .* does not match AffectNet's columns; "
                                        r"expected 9 comma-separated"):
        SOURCES["affectnet"].scan(affectnet)

    celeba = write_celeba(tmp_path / "celeba").root
    partition = celeba / "list_eval_partition.txt"
    original = partition.read_text()
    partition.write_text("".join(line.split()[0] + "\n" for line in original.splitlines()))  # split codes lost
    with pytest.raises(UserError, match=r"list_eval_partition.txt: no '<image> <0\|1\|2>' lines found; line 1 has "
                                        r"1 field\(s\) '000001.jpg'; expected lines '<image> <0\|1\|2>'"):
        SOURCES["celeba"].scan(celeba)
    partition.write_text(original)
    landmarks = celeba / "list_landmarks_align_celeba.txt"
    lines = landmarks.read_text().splitlines()
    lines[3] = lines[3].rsplit(" ", 1)[0]  # the second image's row loses its last number
    landmarks.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"list_landmarks_align_celeba.txt line 4: 10 field\(s\) '000002.jpg .*'; "
                                        r"expected a count line, a header line"):
        SOURCES["celeba"].scan(celeba)


# -- stage 3a and the feature store -----------------------------------------------------------
def write_video(path: Path, frames: int, *, audio: bool, fmt: str | None = None) -> None:
    """Noise frames (no face anywhere), with or without an AAC track; `fmt` forces a container."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format=fmt) as out:
        video = out.add_stream("mpeg4" if fmt == "avi" else "libx264", rate=6)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        sound = out.add_stream("aac", rate=16000) if audio else None
        out.start_encoding()  # the header, even when no frame follows
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), format="rgb24")
            out.mux(video.encode(frame))
        out.mux(video.encode())
        if sound is not None:
            tone = (0.1 * np.sin(np.arange(16000) / 5)).astype(np.float32)[None]
            chunk = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            chunk.sample_rate = 16000
            out.mux(sound.encode(chunk))
            out.mux(sound.encode())


def test_videos_without_face_audio_or_frames_are_reported_per_video_and_the_run_goes_on(tmp_path):
    data, store = tmp_path / "hume", tmp_path / "store"
    media = data / "train" / "mp4"
    media.mkdir(parents=True)
    (data / "train" / "wav").mkdir()
    write_video(media / "00001.mp4", 6, audio=True)                  # frames, sound, no face
    write_video(media / "00002.mp4", 6, audio=False)                 # no audio track and no wav
    write_video(media / "00003.mp4", 0, audio=False, fmt="avi")      # a video stream with zero frames
    write_video(media / "00004.mp4", 0, audio=False)                 # an encoder that got no frame: no stream
    (media / "00005.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")  # a cut download
    soundfile.write(data / "train" / "wav" / "00005.wav", np.zeros(8000, np.float32), 16000)
    header = ["File_ID", "Split", "Adoration", "Amusement", "Anxiety", "Disgust", "Empathic-Pain", "Fear",
              "Surprise", "Age", "Country"]
    rows = [[f"[0000{i}]", "Train", *["0.5"] * 7, "30", "Nowhere"] for i in range(1, 6)]
    with open(data / "data_info.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    hubert = save_hubert(tmp_path / "hubert")
    assert extract.main(["faces", "--data", str(data), "--store", str(store), "--fps", "6"]) == 0
    assert extract.main(["audio", "--data", str(data), "--store", str(store), "--audio-model", str(hubert)]) == 0

    with open(store / "faces_failures.csv", newline="") as f:
        faces = {row["file_id"]: row["reason"] for row in csv.DictReader(f)}
    assert set(faces) == {"00003", "00004", "00005"}
    assert faces["00003"].endswith("the video has no frames")
    assert faces["00004"].endswith("no video stream (or an empty one)")
    assert "cannot open video" in faces["00005"]
    for file_id in ("00001", "00002"):  # no face is a status of the video, not a failure
        with tarfile.open(store / "faces" / f"{file_id}.tar") as tar:
            assert json.load(tar.extractfile("track.json"))["status"] == "no-face"
    with open(store / "audio_failures.csv", newline="") as f:
        audio = {row["file_id"]: row["reason"] for row in csv.DictReader(f)}
    assert set(audio) == {"00002", "00003", "00004"} and audio["00002"].endswith("no audio track")
    assert sorted(p.stem for p in (store / "audio").glob("*.safetensors")) == ["00001", "00005"]


def test_nan_or_infinite_features_are_never_stored_or_trained_on(tmp_path, monkeypatch):
    store = FeatureStore(tmp_path)
    with pytest.raises(RunError, match=r"1 of 8 audio feature values are NaN or infinite in float16"):
        save_features(store, "audio", "00001", torch.tensor([[0.5] * 7 + [1e6]]))  # beyond float16
    assert not store.features("audio", "00001").exists()

    # inside a step: that video is a listed failure, the others are written
    def encoder_output(file_id):
        return torch.tensor([[math.nan, 1.0]]) if file_id == "00002" else torch.ones(1, 2)

    def nan_step(store, args, device):
        return Step(lambda e: False, lambda e: save_features(store, "audio", e.file_id, encoder_output(e.file_id))
                    or "ok")

    monkeypatch.setitem(steps.BUILDERS, "audio", nan_step)
    videos = [VideoEntry(f"0000{i}", "train", [0.5] * 7, "", "", None, None) for i in (1, 2, 3)]
    report = steps.run_step("audio", videos, store, argparse.Namespace(overwrite=False), PartialState())
    assert report["outcomes"] == {"ok": 2} and list(report["failures"]) == ["00002"]
    with open(store.root / "audio_failures.csv", newline="") as f:
        assert "1 of 2 audio feature values are NaN or infinite" in list(csv.DictReader(f))[0]["reason"]
    assert sorted(p.stem for p in (store.root / "audio").glob("*.safetensors")) == ["00001", "00003"]
    entries = []
    for i, bad in enumerate((None, math.nan, math.inf)):
        features = torch.ones(4, 3)
        if bad is not None:
            features[1, 2] = bad
        path = store.features("visual", f"0000{i}")
        path.parent.mkdir(exist_ok=True)
        save_file({"features": features.half()}, str(path))  # written by other means: a corrupted store
        entries.append(VideoEntry(f"0000{i}", "train", [0.5] * 7, "", "", None, None))
    write_table(entries, store.table)
    dataset = FeatureDataset(store, entries, modalities=("visual",), k=2)
    assert dataset[0]["visual"].shape == (2, 3)
    for i in (1, 2):
        with pytest.raises(UserError, match=rf"visual/0000{i}.safetensors: 1 of 12 feature values are NaN or "
                                            r"infinite; delete the file and rerun"):
            dataset[i]

