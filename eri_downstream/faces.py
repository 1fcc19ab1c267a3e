"""Stage 3a, faces: the main subject's face, cropped square, for every sampled frame of a video.

The paper's visual branch sees K faces (224x224) per Hume-Reaction video. Those videos show one
person reacting, sometimes with others passing behind, so per-frame "largest face" is not enough:
we pick the main subject once and follow that face through the video.

Stored format, one uncompressed tar per video (readable with `tarfile` + `json` alone):

    track.json      first member; a JSON object:
                      format        "face-track/1"
                      status        "ok", or "no-face" (no face anywhere: no images, empty lists)
                      detector      name of the detector backend ("mtcnn", "haar")
                      size, margin  crop side in pixels; margin per edge, as a fraction of the
                                    face box's longer side
                      resample      the crop's resampler (shared.face_crop; "bilinear" in tracks
                                    written before it was recorded)
                      source_fps    frame rate of the video
                      times         seconds (presentation time) of each kept frame
                      frame_indices decoding-order number of each kept frame in the video
                      boxes         [x1, y1, x2, y2] face box in frame pixels, null where filled
                      scores        detector confidence, 0 where filled
                      detected      true where the face was found in that frame
                      filled_from   position (in these lists) of the detected frame whose face
                                    was copied into this one, -1 where detected
                      damage        null, or where decoding of a damaged video stopped (the
                                    frames before it are all here)
    000000.jpg ...  the crop of kept frame i (position i in the lists above, not the video's
                    frame number): RGB, size x size, JPEG quality 95
"""
from __future__ import annotations

import io
import json
import math
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from eri_downstream.video import VideoError, VideoReader, decode_frames  # noqa: F401 - decode_frames: public here too
from shared.atomic import atomic_open
from shared.errors import RunError, UserError
from shared.face_crop import FaceCrop
from shared.face_crop import crop_face as crop_to_contract
from shared.pixels import open_rgb

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in frame pixels
Detection = tuple[Box, float]            # box, confidence in [0, 1]
FORMAT = "face-track/1"
JPEG_QUALITY = 95


class Detector(Protocol):
    name: str

    def detect(self, frames: list[np.ndarray]) -> list[list[Detection]]:
        """Faces in each frame (HxWx3 uint8 RGB, all the same size)."""


class MTCNNDetector:
    """facenet-pytorch's MTCNN: weights ship inside the wheel, so it runs offline."""

    name = "mtcnn"

    def __init__(self, device: str = "cpu", min_face_size: int = 20,
                 thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)):
        from facenet_pytorch import MTCNN
        self.model = MTCNN(keep_all=True, device=device, min_face_size=min_face_size,
                           thresholds=list(thresholds))

    def detect(self, frames: list[np.ndarray]) -> list[list[Detection]]:
        if not frames:
            return []
        boxes, probs = self.model.detect(np.stack(frames))  # per frame: (k, 4) and (k,), or None
        return [[] if b is None else [(tuple(float(v) for v in box), float(p)) for box, p in zip(b, ps)]
                for b, ps in zip(boxes, probs)]


class HaarDetector:
    """OpenCV's frontal-face Haar cascade: fast on CPU, no confidence (every score is 1.0)."""

    name = "haar"

    def __init__(self, min_face_size: int = 20, scale_factor: float = 1.1, min_neighbors: int = 5,
                 cascade: str = "haarcascade_frontalface_default.xml"):
        try:
            import cv2
        except ImportError as err:
            raise UserError('the "haar" detector needs OpenCV: pip install "opencv-python-headless<5"') from err
        self.cv2 = cv2
        self.cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, cascade))
        if self.cascade.empty():
            raise UserError(f"OpenCV has no Haar cascade named {cascade!r}")
        self.options = dict(scaleFactor=scale_factor, minNeighbors=min_neighbors,
                            minSize=(min_face_size, min_face_size))

    def detect(self, frames: list[np.ndarray]) -> list[list[Detection]]:
        return [self._one(frame) for frame in frames]

    def _one(self, frame: np.ndarray) -> list[Detection]:
        gray = self.cv2.cvtColor(frame, self.cv2.COLOR_RGB2GRAY)
        rects = self.cascade.detectMultiScale(gray, **self.options)  # (k, 4) x, y, w, h
        return [((float(x), float(y), float(x + w), float(y + h)), 1.0) for x, y, w, h in rects]


DETECTORS: dict[str, type] = {"mtcnn": MTCNNDetector, "haar": HaarDetector}


def make_detector(name: str, **kwargs) -> Detector:
    if name not in DETECTORS:
        raise UserError(f"unknown face detector {name!r}; choose one of: {', '.join(sorted(DETECTORS))}")
    return DETECTORS[name](**kwargs)


def _area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _centre(box: Box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _prominence(box: Box, frame_size: tuple[int, int]) -> float:
    """Area, discounted up to half for a face at the frame's corner: the subject sits near the centre."""
    (cx, cy), (w, h) = _centre(box), frame_size
    off_centre = math.hypot(cx - w / 2, cy - h / 2) / max(math.hypot(w / 2, h / 2), 1e-6)
    return _area(box) * (1 - 0.5 * min(off_centre, 1.0))


def _continues(prev: Box, box: Box, max_shift: float) -> float | None:
    """How far `box` moved from `prev` (in units of prev's longer side), or None when it is too far
    or too different in size to be the same face one sampled frame later."""
    side = max(prev[2] - prev[0], prev[3] - prev[1], 1e-6)
    shift = math.dist(_centre(prev), _centre(box)) / side
    ratio = _area(box) / max(_area(prev), 1e-6)
    return shift if shift <= max_shift and 0.5 <= ratio <= 2.0 else None


def _follow(detections: list[list[Detection]], start: int, box: Box, order: range,
            max_shift: float, min_score: float) -> dict[int, Box]:
    """Boxes of the subject seen at frame `start` with `box`, through the frames in `order`."""
    kept, prev = {start: box}, box
    for i in order:
        moves = [(shift, b) for b, s in detections[i] if s >= min_score
                 and (shift := _continues(prev, b, max_shift)) is not None]
        if moves:
            prev = kept[i] = min(moves)[1]
    return kept


def track_subject(detections: list[list[Detection]], frame_size: tuple[int, int], *,
                  seed_frames: int = 5, max_shift: float = 0.6, min_score: float = 0.9) -> list[Box | None]:
    """The main subject's box in each frame (None where it is not found).

    frame_size is (width, height). The subject is the most prominent confident face (area, weighted
    to the frame centre) over the first `seed_frames` frames that have any; from there it is
    followed forwards and backwards, each frame keeping the confident face whose centre moved least
    from the last kept box (at most `max_shift` of its longer side, area within a factor of 2).
    Other people are ignored even when they become larger.
    """
    with_faces = [i for i, dets in enumerate(detections) if any(s >= min_score for _, s in dets)]
    if not with_faces:
        return [None] * len(detections)
    seeds = [(_prominence(b, frame_size), i, b) for i in with_faces[:seed_frames]
             for b, s in detections[i] if s >= min_score]
    _, start, box = max(seeds)
    kept = _follow(detections, start, box, range(start + 1, len(detections)), max_shift, min_score)
    kept |= _follow(detections, start, box, range(start - 1, -1, -1), max_shift, min_score)
    return [kept.get(i) for i in range(len(detections))]


def crop_face(frame: np.ndarray, box: Box, spec: FaceCrop = FaceCrop()) -> np.ndarray:
    """The face-preprocessing contract's crop (shared.face_crop, as face-shards makes for stages 1
    and 2) of an HxWx3 uint8 frame and a detector box (x1, y1, x2, y2): spec.size x spec.size x 3
    uint8, centred on the box; parts outside the frame are black."""
    return np.asarray(crop_to_contract(frame, box, spec))


def nearest_detected(detected: list[bool]) -> list[int]:
    """For each frame, the nearest detected frame (itself when detected; the earlier one on a tie)."""
    hits = np.flatnonzero(detected)
    return [int(hits[np.argmin(np.abs(hits - i))]) for i in range(len(detected))]


@dataclass
class FaceTrack:
    crops: np.ndarray          # (T, size, size, 3) uint8 RGB
    times: np.ndarray          # (T,) float64 seconds
    frame_indices: np.ndarray  # (T,) int64 decoding-order frame number
    boxes: np.ndarray          # (T, 4) float64 x1 y1 x2 y2, NaN where filled
    scores: np.ndarray         # (T,) float64, 0 where filled
    detected: np.ndarray       # (T,) bool
    filled_from: np.ndarray    # (T,) int64, -1 where detected
    status: str                # "ok" | "no-face"
    source_fps: float
    detector: str
    margin: float = 0.2
    damage: str | None = None  # where decoding of a damaged video stopped, if it did
    resample: str = FaceCrop.resample

    @property
    def size(self) -> int:
        return int(self.crops.shape[1])


def _no_face(spec: FaceCrop, source_fps: float, detector: str, damage: str | None) -> FaceTrack:
    return FaceTrack(np.zeros((0, spec.size, spec.size, 3), np.uint8), np.zeros(0), np.zeros(0, np.int64),
                     np.zeros((0, 4)), np.zeros(0), np.zeros(0, bool), np.zeros(0, np.int64),
                     "no-face", source_fps, detector, spec.margin, damage, spec.resample)


def _detect_all(reader: VideoReader, detector: Detector, batch_size: int
                ) -> tuple[list[int], list[float], list[list[Detection]], tuple[int, int]]:
    """Frame numbers, times and detections of every kept frame, plus (width, height)."""
    indices, times, detections, batch, frame_size = [], [], [], [], (0, 0)
    for index, t, image in reader:
        indices.append(index)
        times.append(t)
        batch.append(image)
        frame_size = (image.shape[1], image.shape[0])
        if len(batch) == batch_size:
            detections += detector.detect(batch)
            batch = []
    detections += detector.detect(batch)
    if not indices:
        raise VideoError(f"{reader.path}: the video has no frames")
    return indices, times, detections, frame_size


def extract_faces(video_path: str | Path, detector: Detector, *, fps: float | None = None,
                  size: int = FaceCrop.size, margin: float = FaceCrop.margin, batch_size: int = 32) -> FaceTrack:
    """Detect in batches, track the main subject, crop (shared.face_crop's contract, `size` and
    `margin`, the same crops face-shards makes); frames without it get the nearest detected
    frame's crop. Two decoding passes keep memory to one batch of frames plus the crops. A damaged
    video gives the frames that decode, and the track's `damage` says where decoding stopped."""
    spec = FaceCrop(size=size, margin=margin)
    reader = VideoReader(video_path, fps)
    indices, times, detections, frame_size = _detect_all(reader, detector, batch_size)
    damage = reader.damage
    boxes = track_subject(detections, frame_size)
    detected = [b is not None for b in boxes]
    if not any(detected):
        return _no_face(spec, reader.source_fps, detector.name, damage)
    crops = {pos: crop_face(image, boxes[pos], spec)
             for pos, (_, _, image) in enumerate(reader) if detected[pos]}
    source = nearest_detected(detected)
    return FaceTrack(
        crops=np.stack([crops[j] for j in source]), times=np.asarray(times, np.float64),
        frame_indices=np.asarray(indices, np.int64),
        boxes=np.array([b if b is not None else (np.nan,) * 4 for b in boxes], np.float64),
        scores=np.array([dict(dets)[b] if b is not None else 0.0 for dets, b in zip(detections, boxes)]),
        detected=np.asarray(detected), filled_from=np.array([-1 if d else j for d, j in zip(detected, source)]),
        status="ok", source_fps=reader.source_fps, detector=detector.name, margin=margin, damage=damage,
        resample=spec.resample)


def _metadata(track: FaceTrack) -> dict:
    return {"format": FORMAT, "status": track.status, "detector": track.detector, "size": track.size,
            "margin": track.margin, "resample": track.resample, "source_fps": track.source_fps, "times": track.times.tolist(),
            "frame_indices": track.frame_indices.tolist(),
            "boxes": [None if np.isnan(b).any() else b for b in track.boxes.tolist()],
            "scores": track.scores.tolist(), "detected": track.detected.tolist(),
            "filled_from": track.filled_from.tolist(), "damage": track.damage}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _jpeg(crop: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(crop).save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def save_face_track(track: FaceTrack, path: str | Path) -> None:
    """Write the tar described in the module docstring; a crash never leaves a partial file at `path`."""
    with atomic_open(path, "wb") as handle, tarfile.open(fileobj=handle, mode="w") as tar:
        _add(tar, "track.json", json.dumps(_metadata(track), allow_nan=False, sort_keys=True).encode())
        for i, crop in enumerate(track.crops):
            _add(tar, f"{i:06d}.jpg", _jpeg(crop))


def load_face_track(path: str | Path) -> FaceTrack:
    """Read a tar written by save_face_track (crops decoded from JPEG, so close but not exact)."""
    try:
        with tarfile.open(path) as tar:
            meta = json.load(tar.extractfile("track.json"))
            names = sorted(n for n in tar.getnames() if n.endswith(".jpg"))
            crops = [np.asarray(open_rgb(tar.extractfile(n).read())) for n in names]
    except (OSError, KeyError, tarfile.TarError, json.JSONDecodeError) as err:
        raise RunError(f"{path}: unreadable face track ({err})") from err
    if meta.get("format") != FORMAT:
        raise RunError(f"{path}: face track format {meta.get('format')!r}, expected {FORMAT!r}")
    size = meta["size"]
    return FaceTrack(
        crops=np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8),
        times=np.asarray(meta["times"], np.float64), frame_indices=np.asarray(meta["frame_indices"], np.int64),
        boxes=np.array([b if b is not None else [np.nan] * 4 for b in meta["boxes"]], np.float64).reshape(-1, 4),
        scores=np.asarray(meta["scores"], np.float64), detected=np.asarray(meta["detected"], bool),
        filled_from=np.asarray(meta["filled_from"], np.int64), status=meta["status"],
        source_fps=meta["source_fps"], detector=meta["detector"], margin=meta["margin"], damage=meta.get("damage"),
        resample=meta.get("resample", "bilinear"))
