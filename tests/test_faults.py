"""Fault injection across the lineage: corrupt, empty and missing shards, malformed list files,
unusable videos, NaN features and losses, a full disk, kill -9 in the middle of a checkpoint,
a state of another architecture, and every command's one-line errors. docs/faults.md lists each
fault with what the suite does and the test that shows it."""
from __future__ import annotations

import argparse
import contextlib
import csv
import errno
import importlib
import io
import json
import math
import os
import pickle
import re
import resource
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
import torch
from accelerate import Accelerator, PartialState
from safetensors.torch import load_file, save_file

from eri_downstream import extract
from eri_downstream.data import FeatureDataset
from eri_downstream.dataset import VideoEntry, write_table
from eri_downstream import steps
from eri_downstream.steps import Step, save_features
from eri_downstream.store import FeatureStore
from pretrain_mae.model import build_mae
from run_utils import ROOT, stage_command
from shared.errors import RunError, UserError, one_line, run_cli
from shared.shards.sources import SOURCES
from shared.stream import Augment, FaceStream, StreamConfig, build_sources, resolve
from shared.stream.reading import ErrorLog, read_shard
from shared.synthetic import write_affectnet, write_celeba
from shared.training.checkpoint import Checkpointer
from shared.training.loop import Hook, train
from tiny_hf import save_hubert

PRETRAIN = "pretrain_mae/main.py"


# -- helpers ----------------------------------------------------------------------------------
def stream_config(**kw) -> StreamConfig:
    base = dict(mode="resampled", batch_size=4, batches_per_epoch=8, num_workers=0, shuffle_buffer=4,
                block_size=1000, augment=Augment(kind="resize", size=16), seed=1)
    return StreamConfig(**{**base, **kw})


def garble_first_jpeg(shard: Path) -> str:
    """Rewrite a shard with its first JPEG replaced by garbage; returns that sample's key."""
    buf, bad = io.BytesIO(), None
    with tarfile.open(shard) as src, tarfile.open(fileobj=buf, mode="w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name.endswith(".jpg") and bad is None:
                data, bad = b"\xff\xd8 not a jpeg", member.name.split(".")[0]
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    shard.write_bytes(buf.getvalue())
    return bad


class NoData:
    """Stands in for a data stream: endless empty batches, an empty position."""

    def __iter__(self):
        while True:
            yield {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def accelerator(model, lr: float = 0.1):
    """A one-process CPU Accelerator with `model` and plain SGD prepared (no state across steps:
    an update is visible in the parameters alone)."""
    acc = Accelerator(cpu=True, mixed_precision="no")
    model, optimizer = acc.prepare(model, torch.optim.SGD(model.parameters(), lr=lr))
    return acc, model, optimizer


def last_line(stderr: str) -> str:
    return [line for line in stderr.splitlines() if line.strip()][-1]


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


# -- the training loop ------------------------------------------------------------------------
def test_nonfinite_loss_skips_the_step_and_k_in_a_row_stop_with_the_last_good_state(tmp_path, caplog):
    torch.manual_seed(0)
    acc, model, optimizer = accelerator(torch.nn.Linear(4, 1))
    checkpointer = Checkpointer(acc, tmp_path)
    bad_steps = {3} | set(range(6, 100))  # one bad step, then a run gone bad for good
    seen: dict[int, torch.Tensor] = {}

    def loss_fn(model, batch, micro_step):
        loss = (model(torch.ones(2, 4)) - 100).pow(2).mean()  # far from converged in 20 steps
        return loss * math.nan if micro_step + 1 in bad_steps else loss, {}

    def snapshot(step):
        seen[step] = torch.cat([p.detach().flatten().clone() for p in model.parameters()])

    with pytest.raises(RunError) as info:
        train(acc, model, optimizer, NoData(), loss_fn, total_steps=20, lr_at=lambda s: 1e-3,
              checkpointer=checkpointer, config={}, samples_per_step=2, log_every=1, save_every=2,
              hooks=[Hook(1, snapshot)], metrics_file=tmp_path / "metrics.jsonl", max_nonfinite_steps=3)
    message = one_line(info.value)
    assert message == str(info.value)
    assert message.startswith("the loss or gradient was NaN or infinite for 3 steps in a row (steps 6-8, "
                              "run.max_nonfinite_steps=3); none of them updated the model and the newest saved "
                              f"state, {checkpointer.dir / 'step_00000004'}, is intact")
    assert torch.equal(seen[3], seen[2]) and not torch.equal(seen[4], seen[3])  # skipped, then training again
    assert torch.equal(seen[7], seen[5]) and torch.isfinite(seen[7]).all()
    assert sorted(p.name for p in checkpointer.dir.iterdir()) == ["step_00000002", "step_00000004"]  # not 6
    assert torch.equal(load_file(checkpointer.dir / "step_00000004" / "model.safetensors")["weight"].flatten(),
                       seen[4][:4])
    rows = {r["step"]: r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())}
    assert rows[3]["nonfinite_steps"] == 1 and "loss" not in rows[3] and math.isfinite(rows[4]["loss"])
    assert "step 3: loss nan" in caplog.text and "step skipped (no update; 1 in a row" in caplog.text


# -- checkpoints ------------------------------------------------------------------------------
def test_no_space_left_while_saving_keeps_the_previous_state_and_resumes_from_it(tmp_path, monkeypatch):
    acc, model, _ = accelerator(torch.nn.Linear(4, 1))
    checkpointer = Checkpointer(acc, tmp_path)
    with torch.no_grad():
        model.weight.fill_(1.0)
    checkpointer.save(1, {"stream": {}}, {})

    def disk_full(folder, **kwargs):
        (Path(folder) / "model.safetensors").write_bytes(b"half a tensor")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(folder) / "model.safetensors"))

    monkeypatch.setattr(acc, "save_state", disk_full)
    with pytest.raises(RunError) as info:
        checkpointer.save(2, {"stream": {}}, {})
    message = one_line(info.value)
    assert message.startswith(f"could not write the training state of step 2 in {checkpointer.dir} "
                              "(No space left on device: ")
    assert f"the partial state was removed, the previous complete state {checkpointer.dir / 'step_00000001'} " \
           "is intact and --resume auto continues from it" in message
    assert sorted(p.name for p in checkpointer.dir.iterdir()) == ["step_00000001"]
    monkeypatch.undo()
    with torch.no_grad():
        model.weight.fill_(7.0)
    assert checkpointer.restore("auto", NoData()) == (1, checkpointer.dir / "step_00000001")
    assert torch.equal(model.weight, torch.ones(1, 4))


@contextlib.contextmanager
def own_signal_handlers():
    """A stage run in this process installs its preemption handlers (SIGTERM, SIGUSR1); put
    the test process's own back afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def tiny_pretrain(out: Path, steps: int) -> list[str]:
    return ["model.name=mae_vit_test", "data.synthetic=true", "data.batch_size=2", "optim.lr=1e-3",
            f"run.total_steps={steps}", "run.save_every=2", "run.log_every=1", "run.mixed_precision=no",
            "run.trackers=[]", "figures.every=0", f"run.output_dir={out}"]


def test_a_file_size_limit_during_a_stage_checkpoint_keeps_the_previous_state(tmp_path):
    """A real disk-full surrogate: RLIMIT_FSIZE makes the write of the state's largest file fail
    (EFBIG, once SIGXFSZ is ignored instead of killing the process)."""
    run = tmp_path / "run"
    with own_signal_handlers():  # the first run, without the limit, in this process: one interpreter less
        assert run_cli(importlib.import_module("pretrain_mae.main").main, tiny_pretrain(run, 4)) == 0
    states = run / "checkpoints"
    limit = 16 * 1024
    assert (states / "step_00000004" / "model.safetensors").stat().st_size > limit
    cmd, env = stage_command(PRETRAIN, ["--resume", "auto", *tiny_pretrain(run, 8)])
    proc = subprocess.run(cmd, env={**env, "PYTHONDONTWRITEBYTECODE": "1"}, cwd=ROOT, capture_output=True,
                          text=True, timeout=300,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert last_line(proc.stderr).startswith(f"main.py: error: could not write the training state of step 6 in "
                                             f"{states} (")
    assert "File too large" in last_line(proc.stderr)
    assert f"the previous complete state {states / 'step_00000004'} is intact" in last_line(proc.stderr)
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in states.iterdir()) == ["step_00000002", "step_00000004"]
    acc, model, _ = accelerator(build_mae("mae_vit_test"))
    assert Checkpointer(acc, run).latest() == states / "step_00000004"


KILLED_WRITER = """
import sys, torch
from accelerate import Accelerator, PartialState
from shared.training.checkpoint import Checkpointer
acc = Accelerator(cpu=True, mixed_precision="no")
model = torch.nn.Linear(2048, 2048)
model, _ = acc.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
checkpointer = Checkpointer(acc, sys.argv[1], keep_last=2)
for step in range(1, 100000):
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(step)
    checkpointer.save(step, {"stream": {}}, {"step": step})
"""


def kill_during_a_write(run: Path) -> bool:
    """Start a process that writes 16 MiB states in a loop and SIGKILL it while a state is being
    written; True when the kill landed mid-write (the partial folder was left behind)."""
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(run)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    states, deadline = run / "checkpoints", time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if any(states.glob(".tmp-step_0*/*")) and len(list(states.glob("step_*/meta.json"))) >= 2:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.001)
    finally:
        proc.kill()
        proc.wait()
    return proc.returncode == -signal.SIGKILL and any(states.glob(".tmp-step_0*"))


def test_kill_9_during_a_checkpoint_write_never_leaves_a_state_to_resume(tmp_path):
    run = tmp_path / "run"
    assert any(kill_during_a_write(run) for _ in range(3)), "could not kill the writer in the middle of a write"
    acc, model, _ = accelerator(torch.nn.Linear(2048, 2048))
    checkpointer = Checkpointer(acc, run)
    newest = checkpointer.latest()
    step = json.loads((newest / "meta.json").read_text())["step"]
    assert all(torch.equal(t, torch.full_like(t, step)) for t in load_file(newest / "model.safetensors").values())
    assert checkpointer.restore("auto", NoData()) == (step, newest)
    assert torch.equal(model.bias, torch.full((2048,), float(step)))
    assert not list(checkpointer.dir.glob(".tmp-step_*"))  # the partial state is cleared on resume


def test_a_state_of_another_architecture_names_missing_unexpected_and_resized_keys(tmp_path):
    acc, model, _ = accelerator(build_mae("mae_vit_test", decoder_depth=2))  # a decoder block the other lacks
    Checkpointer(acc, tmp_path / "small").save(1, {"stream": {}}, {"model": {"name": "mae_vit_test"}})
    acc, model, _ = accelerator(build_mae("mae_vit_test", depth=3, embed_dim=48, num_heads=4))
    checkpointer = Checkpointer(acc, tmp_path / "big")
    state = tmp_path / "small" / "checkpoints" / "step_00000001"
    with pytest.raises(UserError) as info:
        checkpointer.restore(str(state), NoData())
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{state} does not fit this model (saved by another "
                                                      "architecture or stage?): 12 missing: blocks.2.")
    assert "(+8 more); 12 unexpected: decoder_blocks.1." in message
    assert "of another shape: cls_token [1, 1, 32] vs model [1, 1, 48]" in message
    assert f"resume it with the configuration it was saved with ({state / 'config.yaml'})" in message
    # nothing to resume: a fresh start; a folder that is no training state (an export): refused
    assert checkpointer.restore("auto", NoData()) == (0, None)
    (tmp_path / "export").mkdir()
    with pytest.raises(UserError, match=r"export: not a complete training state \(no meta.json\)"):
        checkpointer.restore(str(tmp_path / "export"), NoData())
    meta = json.loads((state / "meta.json").read_text())
    (state / "meta.json").write_text(json.dumps({**meta, "world_size": 2}))  # saved by two processes
    with pytest.raises(UserError, match=r"was saved by 2 processes, this run has 1; resume with the same number"):
        checkpointer.restore(str(state), NoData())


# -- every command: one line, status 2 for bad input and 1 for a failure; a traceback only with --debug
class Evil:
    """Creates a file when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_inputs")
    affectnet = write_affectnet(root / "affectnet").root
    (affectnet / "Manually_Annotated_file_lists" / "training.csv").write_text("a\tb\tc\td\te\tf\tg\th\ti\n")
    (root / "hume").mkdir()
    (root / "hume" / "data_info.csv").write_text("File_ID;Split;Adoration\n[00001];Train;0.5\n")
    store = FeatureStore(root / "store")
    write_table([VideoEntry("00001", "train", [0.5] * 7, "", "", None, None)], store.table)
    for modality in ("visual", "audio", "text"):
        store.save(modality, "00001", torch.ones(3, 8))
    with open(root / "evil.pth", "wb") as f:
        pickle.dump({"model": {}, "args": Evil(root / "pwned")}, f, protocol=2)
    return {"root": root, "affectnet": affectnet, "hume": root / "hume", "store": store.root,
            "evil": root / "evil.pth", "marker": root / "pwned"}


# command, exit status, what the last line says, and its main (run in this process for --debug;
# {out} differs between the two runs.
COMMANDS = {
    "face-shards": (["-m", "shared.shards", "affectnet", "{affectnet}", "--out", "{out}/shards"], 2,
                    r"^face-shards: error: .*training.csv: no row has AffectNet's 9 columns; line 1 has 1 and "
                    r"looks separated by tabs; expected 9 comma-separated columns", "shared.shards.cli"),
    "pretrain, bad source": ([PRETRAIN, "model.name=mae_vit_test", "data.sources={{celeba: {root}/nope}}",
                              "run.trackers=[]", "run.output_dir={out}/pretrain"], 2,
                             r"source celeba: .*/nope does not exist", "pretrain_mae.main"),
    "pretrain, diverging": ([PRETRAIN, *tiny_pretrain(Path("{out}/diverging"), 20), "optim.lr=1e30",
                             "run.max_nonfinite_steps=2"], 1,
                            r"the loss or gradient was NaN or infinite for 2 steps in a row \(steps 2-3",
                            "pretrain_mae.main"),
    "finetune": (["finetune_affectnet/main.py", "data.shardz={root}"], 2,
                 r"unknown config key 'data.shardz'; did you mean 'data.shards'\?", "finetune_affectnet.main"),
    "eri train": (["eri_downstream/train.py", "data.store={store}", "run.output_dir={out}/eri",
                   "run.trackers=[]", "model.overrides={{gru_hiden: 8}}"], 2,
                  r"unknown config key 'model.overrides.gru_hiden'; did you mean 'model.overrides.gru_hidden'\?",
                  "eri_downstream.train"),
    "extract": (["eri_downstream/extract.py", "faces", "--data", "{hume}", "--store", "{out}/features"], 2,
                r"data_info.csv: missing column\(s\) File_ID, Split, .*; expected columns File_ID, Split",
                "eri_downstream.extract"),
    "export": (["-m", "pretrain_mae.export", "{evil}", "--out", "{out}/export"], 2,
               r"refusing to load .*evil.pth: it needs (posix|os)\.system .*nothing in it was run\)",
               "pretrain_mae.export"),
    "grid": (["-m", "eri_downstream.grid", "--configs", "{root}/none.yaml", "--collect"], 2,
             r"configuration file\(s\) not found: .*none.yaml", "eri_downstream.grid"),
}


def command(args: list[str], inputs: dict, out: str) -> list[str]:
    return [a.format(**inputs, out=inputs["root"] / out) for a in args]


def error_of(stderr: str) -> str:
    """The last line without the program name, which differs between a script and this process."""
    return last_line(stderr).split(": error: ", 1)[1]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_reports_bad_input_in_one_line_and_a_traceback_only_with_debug(name, bad_inputs, capsys):
    args, status, message, main = COMMANDS[name]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    plain = subprocess.Popen([sys.executable, *command(args, bad_inputs, "plain")], cwd=ROOT, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # the same run_cli and main with --debug, without starting another interpreter
    argv = command(args, bad_inputs, "debug")
    argv = argv[2:] if argv[0] == "-m" else argv[1:]  # what follows the script or module
    with own_signal_handlers():
        debug_status = run_cli(importlib.import_module(main).main, [*argv, "--debug"])
    debug_err = capsys.readouterr().err
    _, err = plain.communicate(timeout=300)
    assert plain.returncode == status and debug_status == status, err[-3000:]
    assert re.search(message, last_line(err)) and ": error: " in last_line(err), last_line(err)
    assert "Traceback" not in err and "Traceback" in debug_err
    assert error_of(debug_err) == error_of(err).replace(str(bad_inputs["root"] / "plain"),
                                                        str(bad_inputs["root"] / "debug"))
    assert not bad_inputs["marker"].exists()  # the pickle's payload never ran


def test_unexpected_failures_are_one_line_too_and_worker_tracebacks_are_cut(capsys):
    def broken(argv):
        return 1 / 0

    def disk_full(argv):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/x/metrics.jsonl")

    assert run_cli(broken, []) == 1
    assert error_of(capsys.readouterr().err) == ("ZeroDivisionError: division by zero "
                                                 "(run again with --debug for the traceback)")
    assert run_cli(disk_full, []) == 1
    assert error_of(capsys.readouterr().err) == "No space left on device: /runs/x/metrics.jsonl"
    assert run_cli(broken, ["--debug"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and error_of(err) == "ZeroDivisionError: division by zero"

    def bad_store(argv):  # what a DataLoader worker's error looks like once re-raised by the main process
        raise UserError("Caught UserError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                        "last):\n  File \"data.py\", line 1, in _load\nshared.errors.UserError: features/a.safetensors:"
                        " 1 of 4 feature values are NaN or infinite\n")

    assert run_cli(bad_store, []) == 2
    assert error_of(capsys.readouterr().err) == "features/a.safetensors: 1 of 4 feature values are NaN or infinite"


def test_every_entry_point_goes_through_run_cli():
    for path in ("shared/shards/cli.py", PRETRAIN, "pretrain_mae/export.py", "finetune_affectnet/main.py",
                 "eri_downstream/extract.py", "eri_downstream/train.py", "eri_downstream/grid.py"):
        assert re.search(r"raise SystemExit\(run_cli\(main\b", (ROOT / path).read_text()), path
