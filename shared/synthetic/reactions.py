"""A tiny Hume-Reaction (ABAW5 ERI / MuSe 2022) with real h264/aac videos, for offline tests.

Layouts::

    abaw5:  data_info.csv              File_ID "[00123]", Split Train/Val/Test, 7 emotions,
                                       Age, Country; rows of all splits shuffled together
            {train,val,test}/mp4/<id>.mp4
            {train,val,test}/wav/<id>.wav
    muse:   partition.csv              File_ID "00123" (no brackets), Split train/devel/test
            labels.csv                 File_ID "[00123]" + 7 emotions, train and devel only
            mp4/<id>.mp4, wav/<id>.wav (flat)

The MuSe files deliberately spell ids differently (bare vs bracketed), so a reader has to
normalise ids the same way everywhere. Column names are spelled out here rather than
imported from the reader, so a typo in the reader cannot hide behind a shared constant.

Videos show a real public-domain face photo (scikit-image's astronaut, matplotlib's Grace
Hopper, alternating) pasted on a noisy plain background, moving and changing size smoothly;
the pasted box of every frame is recorded. Audio is a loud tone (its frequency is recorded,
so a test can find it again) over a quiet chirp and noise.

Quirks: the first train video shows no face; the second train video's audio is 44.1 kHz
stereo (all others 16 kHz mono); the last train video's wav is missing (its mp4 has audio);
the first val video's mp4 has no audio track (its wav exists); test videos have no labels.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import av
import numpy as np
import soundfile
from matplotlib import cbook
from PIL import Image
from skimage import data as skdata

from shared.synthetic.faces import Box
from shared.synthetic.layouts.common import dataset_rng

SPLITS = ("train", "val", "test")
EMOTION_COLUMNS = ("Adoration", "Amusement", "Anxiety", "Disgust", "Empathic-Pain", "Fear",
                   "Surprise")
PHOTOS = ("astronaut", "grace_hopper")
COUNTRIES = ("United States", "South Africa", "Venezuela")
_SPLIT_SPELLING = {"abaw5": {"train": "Train", "val": "Val", "test": "Test"},
                   "muse": {"train": "train", "val": "devel", "test": "test"}}


@dataclass
class PlantedVideos:
    """Exactly what `write_hume_reaction` put on disk; ids are bare ("00123").

    `boxes[id]` holds one (x, y, w, h) per frame in video pixels, or None for the no-face
    video. `labels[id]` is None for test videos. `tones[id]` is the frequency (Hz) of the
    dominant tone in both the mp4's audio and the wav.
    """

    root: Path
    layout: str
    fps: int
    n_frames: int
    size: tuple[int, int]
    seconds: float
    ids: dict[str, list[str]] = field(default_factory=dict)
    labels: dict[str, list[float] | None] = field(default_factory=dict)
    boxes: dict[str, list[Box] | None] = field(default_factory=dict)
    photos: dict[str, str | None] = field(default_factory=dict)
    age: dict[str, str] = field(default_factory=dict)
    country: dict[str, str] = field(default_factory=dict)
    sample_rates: dict[str, int] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)
    tones: dict[str, float] = field(default_factory=dict)
    no_face: list[str] = field(default_factory=list)
    no_audio_track: list[str] = field(default_factory=list)
    missing_wav: list[str] = field(default_factory=list)

    def split_of(self, file_id: str) -> str:
        return next(split for split, ids in self.ids.items() if file_id in ids)


@lru_cache(maxsize=None)
def face_photo(name: str) -> np.ndarray:
    """The head region (RGB uint8) of a public-domain photo shipped inside a wheel."""
    if name == "astronaut":
        return skdata.astronaut()[30:195, 155:295]
    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        return np.asarray(Image.open(handle).convert("RGB"))[90:345, 140:375]


def _trajectory(rng: np.random.Generator, n_frames: int, size: tuple[int, int],
                aspect: float) -> list[Box]:
    """Boxes that glide between two random positions and scales (smooth easing, in frame)."""
    width, height = size
    start, end = rng.uniform(0.05, 0.95, size=(2, 3))
    boxes = []
    for i in range(n_frames):
        ease = 0.5 - 0.5 * np.cos(np.pi * i / max(n_frames - 1, 1))
        fx, fy, fs = start + (end - start) * ease
        h = min(round(height * (0.4 + 0.45 * fs)), height)
        w = min(round(h * aspect), width)
        boxes.append((round(fx * (width - w)), round(fy * (height - h)), w, h))
    return boxes


def _frames(rng: np.random.Generator, photo: str | None, n_frames: int,
            size: tuple[int, int]) -> tuple[list[np.ndarray], list[Box] | None]:
    """RGB frames on a blue-green noisy background, with the photo pasted in (if any)."""
    width, height = size
    colour = rng.uniform([0, 80, 120], [60, 200, 255])
    background = np.clip(colour + rng.normal(0, 8, (height, width, 3)), 0, 255).astype(np.uint8)
    if photo is None:
        return [background] * n_frames, None
    source = Image.fromarray(face_photo(photo))
    boxes = _trajectory(rng, n_frames, size, source.width / source.height)
    frames = []
    for x, y, w, h in boxes:
        frame = background.copy()
        frame[y:y + h, x:x + w] = np.asarray(source.resize((w, h), Image.BILINEAR))
        frames.append(frame)
    return frames, boxes


def _audio(rng: np.random.Generator, seconds: float, rate: int, channels: int,
           tone: float) -> np.ndarray:
    """(samples, channels) float32: a loud tone, a quieter rising chirp, and noise."""
    t = np.arange(round(seconds * rate)) / rate
    f0, f1 = rng.uniform(200, 400), rng.uniform(1500, 3000)
    chirp = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t ** 2 / (2 * seconds)))
    mono = 0.5 * np.sin(2 * np.pi * tone * t) + 0.1 * chirp
    signal = mono[:, None] + rng.normal(0, 0.02, (t.size, channels))
    return signal.astype(np.float32)


def _write_mp4(path: Path, frames: list[np.ndarray], fps: int, audio: np.ndarray | None,
               rate: int) -> None:
    """h264 (yuv420p, no B-frames) plus, if given, an aac track; both fully flushed.

    Every stream is added before the first packet is muxed: the header is written then.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": "ultrafast", "crf": "18"}
        layout = None if audio is None else ("mono" if audio.shape[1] == 1 else "stereo")
        sound = None if audio is None else out.add_stream("aac", rate=rate, layout=layout)
        for frame in frames:
            out.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        out.mux(video.encode())
        if sound is not None:
            chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio.T), format="fltp",
                                               layout=layout)
            chunk.sample_rate, chunk.pts = rate, 0
            out.mux(sound.encode(chunk))
            out.mux(sound.encode())


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _write_tables(planted: PlantedVideos, rng: np.random.Generator) -> None:
    """The layout's CSV files, rows of all splits in one shuffled order."""
    spelling = _SPLIT_SPELLING[planted.layout]
    ids = [i for split in SPLITS for i in planted.ids[split]]
    ids = [ids[k] for k in rng.permutation(len(ids))]

    def label_cells(file_id: str) -> list[str]:
        values = planted.labels[file_id]
        return [""] * len(EMOTION_COLUMNS) if values is None else [f"{v:.6f}" for v in values]

    if planted.layout == "abaw5":
        _write_csv(planted.root / "data_info.csv",
                   ["File_ID", "Split", *EMOTION_COLUMNS, "Age", "Country"],
                   [[f"[{i}]", spelling[planted.split_of(i)], *label_cells(i),
                     planted.age[i], planted.country[i]] for i in ids])
        return
    _write_csv(planted.root / "partition.csv", ["File_ID", "Split"],
               [[i, spelling[planted.split_of(i)]] for i in ids])
    _write_csv(planted.root / "labels.csv", ["File_ID", *EMOTION_COLUMNS],
               [[f"[{i}]", *label_cells(i)] for i in ids if planted.labels[i] is not None])


def _plant_metadata(planted: PlantedVideos, rng: np.random.Generator,
                    counts: list[int]) -> None:
    """Ids (`counts` per split), labels, demographics, photos, audio formats and quirks."""
    numbers = rng.choice(np.arange(1, 10_000), size=sum(counts), replace=False)
    names = [f"{n:05d}" for n in numbers]  # below 10000: every id keeps a leading zero
    for split, start, count in zip(SPLITS, np.cumsum([0, *counts]), counts):
        planted.ids[split] = names[start:start + count]
    train, val = planted.ids["train"], planted.ids["val"]
    planted.no_face, planted.missing_wav = [train[0]], [train[-1]]
    planted.no_audio_track = [val[0]]
    for k, file_id in enumerate(names):
        test = file_id in planted.ids["test"]
        labels = None if test else [round(float(v), 6) for v in rng.uniform(0, 1, 7)]
        planted.labels[file_id] = labels
        planted.photos[file_id] = None if file_id in planted.no_face else PHOTOS[k % 2]
        planted.age[file_id] = str(int(rng.integers(18, 70)))
        planted.country[file_id] = COUNTRIES[k % len(COUNTRIES)]
        stereo = file_id == train[1]
        planted.sample_rates[file_id] = 44_100 if stereo else 16_000
        planted.channels[file_id] = 2 if stereo else 1
        planted.tones[file_id] = float(rng.integers(4, 12) * 50)


def _write_video(planted: PlantedVideos, file_id: str, rng: np.random.Generator) -> None:
    """One video's mp4 and wav at the layout's media paths."""
    folder = planted.root / planted.split_of(file_id) if planted.layout == "abaw5" else planted.root
    frames, planted.boxes[file_id] = _frames(rng, planted.photos[file_id], planted.n_frames,
                                             planted.size)
    rate, channels = planted.sample_rates[file_id], planted.channels[file_id]
    audio = _audio(rng, planted.seconds, rate, channels, planted.tones[file_id])
    _write_mp4(folder / "mp4" / f"{file_id}.mp4", frames, planted.fps,
               None if file_id in planted.no_audio_track else audio, rate)
    if file_id not in planted.missing_wav:
        (folder / "wav").mkdir(parents=True, exist_ok=True)
        soundfile.write(folder / "wav" / f"{file_id}.wav", audio, rate, subtype="PCM_16")


def write_hume_reaction(root: Path | str, *, layout: str = "abaw5", n_train: int = 3,
                        n_val: int = 2, n_test: int = 2, seconds: float = 1.0, fps: int = 10,
                        size: tuple[int, int] = (160, 120), seed: int = 0) -> PlantedVideos:
    """Write a tiny Hume-Reaction in `layout` ("abaw5" or "muse") under `root`.

    `size` is (width, height) and must be even (yuv420p). At least 3 train videos and 1 val
    video are needed to plant the quirks on distinct videos.
    """
    if layout not in _SPLIT_SPELLING:
        raise ValueError(f"layout must be 'abaw5' or 'muse', got {layout!r}")
    if n_train < 3 or n_val < 1 or n_test < 0:
        raise ValueError("need n_train >= 3, n_val >= 1 and n_test >= 0 to plant every quirk")
    if size[0] % 2 or size[1] % 2:
        raise ValueError(f"frame size must be even for yuv420p, got {size}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    planted = PlantedVideos(root=root, layout=layout, fps=fps, n_frames=round(seconds * fps),
                            size=tuple(size), seconds=seconds)
    rng = dataset_rng(seed, f"hume-reaction-{layout}")
    _plant_metadata(planted, rng, [n_train, n_val, n_test])
    for split in SPLITS:
        for file_id in planted.ids[split]:
            _write_video(planted, file_id, rng)
    _write_tables(planted, rng)
    return planted
