"""Videos and tables as phones, copies and partial runs leave them: a display matrix, a file cut
short, a table step over some splits. docs/faults.md names these tests."""
from __future__ import annotations

import argparse
import csv

import av
import numpy as np
import pytest
import soundfile
from accelerate import PartialState

from eri_downstream import extract, steps
from eri_downstream.audio import load_audio
from eri_downstream.dataset import VideoEntry, read_table
from eri_downstream.faces import MTCNNDetector, extract_faces, load_face_track
from eri_downstream.store import FeatureStore
from eri_downstream.video import VideoReader
from shared.synthetic.reactions import write_hume_reaction
from run_utils import run_stage
from test_eri_faces import ASTRONAUT, ASTRONAUT_FACE, H, W, background, build, paste


def write_mp4(path, frames, rate: int = 6, rotation: int = 0, hflip: bool = False, audio: np.ndarray | None = None):
    """h264 (+ aac) with the moov atom first (as phones and `-movflags faststart` write it) and a
    display matrix of `rotation` degrees counter-clockwise (PyAV's convention), then `hflip`."""
    with av.open(str(path), "w", options={"movflags": "faststart"}) as out:
        video = out.add_stream("libx264", rate=rate)
        video.width, video.height, video.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        if rotation or hflip:
            video.set_display_rotation(rotation, hflip=hflip)
        sound = out.add_stream("aac", rate=16000, layout="mono") if audio is not None else None
        for frame in frames:
            out.mux(video.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        out.mux(video.encode())
        if sound is not None:
            chunk = av.AudioFrame.from_ndarray(audio[None].astype(np.float32), format="fltp", layout="mono")
            chunk.sample_rate, chunk.pts = 16000, 0
            out.mux(sound.encode(chunk))
            out.mux(sound.encode())


# -- orientation (kind 1) -----------------------------------------------------------------------
@pytest.mark.parametrize("rotation, hflip, turns", [(-90, False, -1), (90, False, 1), (180, False, 2),
                                                   (0, True, 0), (90, True, 1)])
def test_frames_are_read_as_the_display_matrix_shows_them(tmp_path, rotation, hflip, turns):
    """Stored pixels S with a display matrix: the reader gives rot90(S, turns) (then mirrored),
    as players show it; lossless h264 so pixels compare exactly up to the colour conversion."""
    rng = np.random.default_rng(0)
    stored = np.asarray(np.kron(rng.integers(0, 256, (6, 8, 3)), np.ones((8, 8, 1))), np.uint8)  # 48 x 64
    path = tmp_path / "v.mp4"
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=6, options={"crf": "0"})
        video.width, video.height, video.pix_fmt = 64, 48, "yuv444p"
        video.set_display_rotation(rotation, hflip=hflip)
        for _ in range(2):
            out.mux(video.encode(av.VideoFrame.from_ndarray(stored, format="rgb24")))
        out.mux(video.encode())
    expected = np.rot90(stored, turns)[:, ::-1] if hflip else np.rot90(stored, turns)
    shown = [image for _, _, image in VideoReader(path)]
    assert len(shown) == 2 and shown[0].shape == expected.shape
    assert np.abs(shown[0].astype(int) - expected).mean() < 3


@pytest.fixture(scope="module")
def detector():
    return MTCNNDetector()


def test_a_phone_video_stored_sideways_finds_the_face_in_every_frame(tmp_path, detector):
    """The issue's input: frames stored sideways with a -90 degree display matrix (PyAV
    frame.rotation == -90) gave no face at all; the same frames upright give 12 of 12. Sibling:
    stored upside down with a 180 degree matrix."""
    frames, truth = build(np.random.default_rng(0), "moving")
    write_mp4(tmp_path / "upright.mp4", frames)
    write_mp4(tmp_path / "sideways.mp4", [np.rot90(f, 1) for f in frames], rotation=-90)
    write_mp4(tmp_path / "upside_down.mp4", [np.rot90(f, 2) for f in frames], rotation=180)
    with av.open(str(tmp_path / "sideways.mp4")) as container:
        assert next(container.decode(video=0)).rotation == -90
    upright = extract_faces(tmp_path / "upright.mp4", detector, size=64)
    assert upright.detected.sum() == len(frames) == 12
    for name in ("sideways.mp4", "upside_down.mp4"):
        track = extract_faces(tmp_path / name, detector, size=64)
        assert track.status == "ok" and track.detected.sum() == 12, name
        # in the upright picture's pixels: the turned frames were compressed apart, which moves a
        # box of ~40 px by a few (4.19 seen); boxes left in the stored, turned frame's coordinates
        # would be tens of pixels off
        assert np.abs(track.boxes - upright.boxes).max() < 8, name
        same = np.abs(track.crops.astype(int) - upright.crops).mean()
        turned = np.abs(np.rot90(track.crops, axes=(1, 2)).astype(int) - upright.crops).mean()
        assert same < 16 and turned > 2 * same, (name, same, turned)  # the upright face, not a turned one


# -- damaged media (kind 4) ---------------------------------------------------------------------
def decodable(path) -> int:
    """Frames a plain decode gets before the damage stops it (the test's own count)."""
    n = 0
    with av.open(str(path)) as container:
        try:
            for _ in container.decode(video=0):
                n += 1
        except av.error.FFmpegError:
            pass
    return n


def test_a_video_cut_short_keeps_the_frames_that_decode_and_is_listed_as_partial(tmp_path):
    """The issue's input: an mp4 cut at 60 % of its bytes (33 of 60 frames decodable) was a
    failed video with no face track. Now the decodable frames are the track (sampled at 6 of
    the 30 fps), and faces_failures.csv lists the video as partial, also after a resumed run."""
    rng = np.random.default_rng(1)
    frames = []
    for i in range(60):
        frame = background(rng)
        paste(frame, ASTRONAUT, ASTRONAUT_FACE, 20 + i, 20, 0.5)
        frames.append(frame)
    whole = tmp_path / "whole.mp4"
    write_mp4(whole, frames, rate=30)
    cut = tmp_path / "00007.mp4"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.6)])
    n = decodable(cut)
    assert 0 < n < 60
    store = FeatureStore(tmp_path / "store")
    entry = VideoEntry("00007", "train", [0.5] * 7, "", "", cut, None)
    args = argparse.Namespace(overwrite=False, detector="mtcnn", fps=6.0, size=64, margin=0.2, batch_size=16)
    for _ in range(2):  # the second run leaves the video as it is: still listed
        report = steps.run_step("faces", [entry], store, args, PartialState())
        with open(store.root / "faces_failures.csv", newline="") as f:
            listed = {row["file_id"]: row["reason"] for row in csv.DictReader(f)}
        assert listed["00007"].startswith(f"partial: decoding stopped after frame {n} (")
    assert report["failures"] == {} and report["outcomes"] == {"already done": 1}
    track = load_face_track(store.faces("00007"))
    assert list(track.frame_indices) == list(range(0, n, 5)) and track.detected.all()
    assert track.damage.startswith(f"decoding stopped after frame {n}")


def test_audio_cut_short_keeps_what_decodes_and_says_so(tmp_path):
    """Siblings: the aac track of an mp4 cut at 60 %, and a WAV cut at 60 % (libsndfile reads it
    without a word; its header declares the whole length)."""
    t = np.arange(32000) / 16000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    whole = tmp_path / "whole.mp4"
    write_mp4(whole, [np.zeros((H, W, 3), np.uint8)] * 12, audio=tone)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * 0.6)])
    damage: list[str] = []
    wave = load_audio(cut, damage=damage)
    assert 0 < len(wave) < len(load_audio(whole)) and len(damage) == 1
    assert damage[0].startswith("audio decoding stopped after")
    soundfile.write(tmp_path / "whole.wav", tone, 16000, subtype="PCM_16")
    data = (tmp_path / "whole.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(data[: int(len(data) * 0.6)])
    kept = (int(len(data) * 0.6) - 44) // 2  # 44-byte header, 2 bytes a frame
    damage = []
    assert len(load_audio(tmp_path / "cut.wav", damage=damage)) == kept
    assert damage == [f"the WAV holds {kept} of the 32000 frames its header declares (cut short); kept the {kept}"]
    damage = []
    load_audio(tmp_path / "whole.wav", damage=damage)
    assert damage == []


# -- a partial re-run (kind 7) ------------------------------------------------------------------
def test_a_table_step_over_some_splits_keeps_the_rows_of_the_others(tmp_path):
    """The issue's input: `table --splits train,val`, then `table --splits test`, left only the
    test videos in videos.csv, and train.py died with an IndexError. Now the table keeps every
    row, and train.py on a table without train videos says so in one line."""
    planted = write_hume_reaction(tmp_path / "hume", n_test=2, seconds=0.4)
    store = tmp_path / "store"
    for splits in ("train,val", "test"):
        assert extract.main(["table", "--data", str(planted.root), "--store", str(store), "--splits", splits]) == 0
    assert {e.file_id: e.split for e in read_table(store / "videos.csv")} == {
        i: s for s in ("train", "val", "test") for i in planted.ids[s]}

    only_test = tmp_path / "only_test"
    assert extract.main(["table", "--data", str(planted.root), "--store", str(only_test), "--splits", "test"]) == 0
    proc = run_stage("eri_downstream/train.py", f"data.store={only_test}", f"run.output_dir={tmp_path / 'run'}",
                     "run.trackers=[]", check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last.startswith("train.py: error: ") and "videos.csv: no labelled train and no labelled val videos" in last
