"""Stage 3a faces on real face photos (public-domain astronaut and Grace Hopper) pasted into
small h264 videos: detection, main-subject tracking, gap filling, the tar format, bad videos."""
from __future__ import annotations

import io
import json
import tarfile

import av
import matplotlib.cbook
import numpy as np
import pytest
import skimage.data
from PIL import Image

from eri_downstream.faces import (DETECTORS, FaceTrack, MTCNNDetector, VideoError, crop_face, decode_frames,
                                  extract_faces, load_face_track, make_detector, nearest_detected,
                                  save_face_track, track_subject)
from shared.errors import UserError
from shared.face_crop import FaceCrop

W, H, FPS, T = 200, 160, 6, 12
S = FaceCrop.size  # extract_faces' default crop side: face-shards'
GAP = range(4, 8)  # frames of the "gap" video where the face is gone
# face photos cropped around the face, and the face box inside that crop (x1, y1, x2, y2), measured
# once with MTCNN on the full photos
ASTRONAUT, ASTRONAUT_FACE = skimage.data.astronaut()[20:200, 140:330], (41, 42, 128, 152)
GRACE = np.asarray(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB"))[90:370, 150:380]
GRACE_FACE = (24, 30, 206, 250)


def background(rng: np.random.Generator) -> np.ndarray:
    """Blotchy colour noise (H, W, 3): texture for the encoder, no face-like structure."""
    low = Image.fromarray(rng.integers(0, 256, (H // 16, W // 16, 3), dtype=np.uint8)).resize((W, H), Image.BILINEAR)
    return np.clip(np.asarray(low, int) + rng.integers(-20, 21, (H, W, 3)), 0, 255).astype(np.uint8)


def paste(frame: np.ndarray, photo: np.ndarray, face: tuple, x: int, y: int, scale: float) -> tuple:
    """Paste `photo` scaled at (x, y); returns where its face box lands in the frame."""
    h, w = photo.shape[:2]
    patch = np.asarray(Image.fromarray(photo).resize((round(w * scale), round(h * scale)), Image.BILINEAR))
    frame[y:y + patch.shape[0], x:x + patch.shape[1]] = patch
    return tuple(o + v * scale for o, v in zip((x, y, x, y), face))


def write_mp4(path, frames: list[np.ndarray]) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        out.start_encoding()
        for frame in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(stream.encode())


def iou(a, b) -> float:
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def build(rng, kind: str) -> tuple[list[np.ndarray], list]:
    """Frames of one test video and the main subject's true face box per frame (None when absent).

    moving: the astronaut moves right and grows. two: the astronaut, and Grace Hopper growing in the
    corner until her face is the larger one. gap: Grace Hopper alone, gone in GAP. noise: no face.
    """
    frames, truth = [], []
    for i in range(T):
        frame, box = background(rng), None
        if kind == "moving":
            box = paste(frame, ASTRONAUT, ASTRONAUT_FACE, 10 + 6 * i, 10 + 2 * i, 0.45 + 0.015 * i)
        elif kind == "two":
            box = paste(frame, ASTRONAUT, ASTRONAUT_FACE, 8 + i, 30, 0.45)
            paste(frame, GRACE, GRACE_FACE, 125, 70, 0.12 + 0.016 * i)
        elif kind == "gap" and i not in GAP:
            box = paste(frame, GRACE, GRACE_FACE, 60 + 2 * i, 20, 0.4)
        frames.append(frame)
        truth.append(box)
    return frames, truth


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict:
    """{kind: (mp4 path, true boxes)}."""
    rng, root = np.random.default_rng(0), tmp_path_factory.mktemp("videos")
    out = {}
    for kind in ("moving", "two", "gap", "noise"):
        frames, truth = build(rng, kind)
        write_mp4(root / f"{kind}.mp4", frames)
        out[kind] = (root / f"{kind}.mp4", truth)
    return out


@pytest.fixture(scope="module")
def tracks(videos) -> dict[str, FaceTrack]:
    detector = MTCNNDetector()
    return {kind: extract_faces(path, detector, batch_size=8) for kind, (path, _) in videos.items()}


def test_decode_keeps_every_frame_or_samples_at_fps(videos):
    frames, times, fps = decode_frames(videos["moving"][0])
    assert (len(frames), fps, frames[0].shape, frames[0].dtype) == (T, FPS, (H, W, 3), np.uint8)
    np.testing.assert_allclose(times, np.arange(T) / FPS, atol=1e-6)
    _, sampled, _ = decode_frames(videos["moving"][0], fps=2)
    np.testing.assert_allclose(sampled, np.arange(0, T, 3) / FPS, atol=1e-6)


def test_mtcnn_finds_and_tracks_the_moving_face(tracks, videos):
    track, truth = tracks["moving"], videos["moving"][1]
    assert track.status == "ok" and track.detector == "mtcnn" and track.detected.sum() >= T - 2
    assert track.crops.shape == (T, S, S, 3) and track.crops.dtype == np.uint8
    for box, true, hit in zip(track.boxes, truth, track.detected):
        assert not hit or iou(box, true) > 0.5
    assert np.all(track.scores[track.detected] > 0.9) and np.array_equal(track.frame_indices, np.arange(T))


def test_tracking_keeps_the_main_subject_when_another_face_grows(tracks, videos):
    track, truth = tracks["two"], videos["two"][1]
    assert track.detected.sum() >= T - 2
    assert all(iou(box, true) > 0.5 for box, true, hit in zip(track.boxes, truth, track.detected) if hit)


def test_missing_frames_are_filled_from_the_nearest_detection(tracks, videos):
    track, truth = tracks["gap"], videos["gap"][1]
    assert list(track.detected) == [box is not None for box in truth]
    assert list(track.filled_from[GAP]) == [3, 3, 8, 8] and np.all(track.filled_from[track.detected] == -1)
    assert np.isnan(track.boxes[GAP]).all() and np.all(track.scores[GAP] == 0)
    assert all(np.array_equal(track.crops[i], track.crops[j]) for i, j in zip(GAP, [3, 3, 8, 8]))
    assert all(iou(box, true) > 0.5 for box, true in zip(track.boxes, truth) if true is not None)


def test_a_video_without_faces_is_a_status_not_an_error(tracks, tmp_path):
    track = tracks["noise"]
    assert track.status == "no-face" and track.crops.shape == (0, S, S, 3)
    save_face_track(track, tmp_path / "noise.tar")
    assert load_face_track(tmp_path / "noise.tar").status == "no-face"


def test_tar_round_trip_and_plain_reading(tracks, tmp_path):
    track, path = tracks["gap"], tmp_path / "faces" / "gap.tar"
    save_face_track(track, path)
    assert [p.name for p in path.parent.iterdir()] == ["gap.tar"]  # no temporary left behind
    back = load_face_track(path)
    for field in ("times", "frame_indices", "boxes", "scores", "detected", "filled_from"):
        np.testing.assert_array_equal(getattr(back, field), getattr(track, field))
    assert (back.status, back.source_fps, back.detector, back.margin, back.size) == ("ok", FPS, "mtcnn", 0.2, S)
    assert back.resample == "bicubic"
    assert np.abs(back.crops.astype(int) - track.crops).mean() < 3
    with tarfile.open(path) as tar:  # without the project's code
        names = tar.getnames()
        meta = json.load(tar.extractfile("track.json"))
        first = Image.open(io.BytesIO(tar.extractfile("000000.jpg").read()))
    assert names == ["track.json"] + [f"{i:06d}.jpg" for i in range(T)]
    assert meta["format"] == "face-track/1" and meta["boxes"][4] is None and first.size == (S, S)


def test_tracking_rule_on_synthetic_detections():
    a, b, c = (10, 10, 50, 50), (120, 10, 200, 90), (14, 12, 54, 52)
    dets = [[], [(a, 0.99), ((0, 0, 5, 5), 0.5)], [(c, 0.98), (b, 0.99)], [(b, 0.99)]]
    # seeded on frame 1 alone, the subject is a: the larger b is someone else, never jumped to
    assert track_subject(dets, (200, 100), seed_frames=1) == [None, a, c, None]
    # over the default seed window b is the most prominent face, and a is not b one frame earlier
    assert track_subject(dets, (200, 100)) == [None, None, b, b]
    assert nearest_detected([False, True, False, False, True, False]) == [1, 1, 1, 4, 4, 4]


def test_crop_is_square_padded_and_centred():
    frame = np.full((100, 100, 3), 200, np.uint8)
    crop = crop_face(frame, (0, 0, 40, 20), FaceCrop(size=64, margin=0.25))  # square side 60 centred at (20, 10)
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
    assert crop[:15].max() == 0 and crop[:, :8].max() == 0 and crop[40, 40].min() == 200


def test_bad_videos_raise_video_error(tmp_path):
    write_mp4(tmp_path / "empty.mp4", [])
    (tmp_path / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    for name in ("empty.mp4", "corrupt.mp4", "missing.mp4"):
        with pytest.raises(VideoError):
            decode_frames(tmp_path / name)


def test_unknown_detector_is_a_user_error():
    with pytest.raises(UserError, match="haar, mtcnn"):
        make_detector("retinaface")
    assert set(DETECTORS) == {"mtcnn", "haar"}


def test_haar_backend_finds_the_face(videos):
    pytest.importorskip("cv2")  # optional backend: opencv-python-headless<5
    frames, _, _ = decode_frames(videos["moving"][0])
    truth = videos["moving"][1]
    found = make_detector("haar").detect(frames)  # per frame: [(box, score)]
    assert sum(any(iou(box, true) > 0.4 for box, _ in dets) for dets, true in zip(found, truth)) >= T - 2
