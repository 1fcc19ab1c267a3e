"""Built-in reaction videos for stage 3: the ABAW5 Hume-Reaction layout, with learnable labels.

`write_builtin_reactions(root)` writes what the ABAW5 release holds (REFERENCE.md section 3)::

    data_info.csv                  File_ID "[00123]", Split Train/Val/Test, 7 intensities (empty
                                   for Test), Age, Country; rows of all splits shuffled together
    {train,val,test}/mp4/<id>.mp4  h264 + aac (16 kHz mono)
    {train,val,test}/wav/<id>.wav  the same sound, 16-bit PCM

plus `transcripts.csv` (file_id, text; bare ids, sorted), the format of the feature store's
transcripts file, for a run that brings its own transcripts instead of speech recognition.

Each video's 7 intensities (Adoration, Amusement, Anxiety, Disgust, Empathic-Pain, Fear,
Surprise) are a latent that every modality shows in part:

- face: a drawn person (`expressions.py`) whose expression is a blend of AffectNet classes,
  `FACE_MIX` (Amusement smiles, Adoration smiles softly, Surprise, Disgust, Fear, Anxiety as a
  weaker fear, Empathic-Pain as sadness), rising over the first second and held; Fear and
  Anxiety look alike, as do Amusement and Adoration;
- voice: a harmonic tone in syllables whose pitch (Fear, Surprise, Amusement up, Empathic-Pain
  down), pitch glide (Surprise rising, Empathic-Pain falling), loudness, tremolo (Anxiety,
  Fear), laughter-like pulses (Amusement), timbre (Adoration soft, Disgust buzzy) and breath
  noise (Disgust) follow the intensities; Adoration is quiet in the voice;
- words: emotion words of `VOCABULARY` drawn in proportion to each intensity, among fillers.

Nuisances vary independently: the person, framing, head motion, background, the speaker's
pitch, syllable rate and level, sentence length. No modality alone recovers all seven; the
tests fit simple per-modality features and check that each informs and together they inform
most. Boxes, labels (test videos included) and transcripts are returned.
"""

from __future__ import annotations

import csv
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile

from shared.synthetic.builtin import _context, item_rng
from shared.synthetic.expressions import PARAMS, TARGETS, background, blend, draw_expression, random_look
from shared.synthetic.faces import Box
from shared.synthetic.reactions import EMOTION_COLUMNS, _write_mp4

SPLITS = ("train", "val", "test")
SPLIT_NAMES = {"train": "Train", "val": "Val", "test": "Test"}
COUNTRIES = ("United States", "South Africa", "Venezuela")
RATE = 16_000

# AffectNet class weights (Neutral, Happy, Sad, Surprise, Fear, Disgust, Anger, Contempt) that
# each emotion, at intensity 1, adds to the face.
FACE_MIX = np.array([
    [0, 0.45, 0, 0, 0, 0, 0, 0],  # Adoration: a soft smile
    [0, 1.0, 0, 0, 0, 0, 0, 0],   # Amusement: a broad smile
    [0, 0, 0, 0, 0.5, 0, 0, 0],   # Anxiety: a weaker fear face
    [0, 0, 0, 0, 0, 1.0, 0, 0],   # Disgust
    [0, 0, 1.0, 0, 0, 0, 0, 0],   # Empathic-Pain: sadness
    [0, 0, 0, 0, 1.0, 0, 0, 0],   # Fear
    [0, 0, 0, 1.0, 0, 0, 0, 0],   # Surprise
])
VOCABULARY = {
    "Adoration": ("adorable", "sweet", "lovely", "cute"),
    "Amusement": ("funny", "hilarious", "laughing", "joke"),
    "Anxiety": ("nervous", "worried", "tense", "uneasy"),
    "Disgust": ("gross", "disgusting", "nasty", "yuck"),
    "Empathic-Pain": ("ouch", "painful", "hurts", "poor"),
    "Fear": ("scary", "afraid", "terrified", "frightening"),
    "Surprise": ("wow", "unexpected", "whoa", "surprising"),
}
FILLERS = ("this", "is", "so", "the", "video", "that", "was", "i", "think", "really", "oh",
           "look", "at", "it", "just", "and", "a", "what", "he", "she", "they", "well")
WORDS_PER_UNIT = 2.0  # expected emotion words per unit of intensity

# The EMI-like task: Hume-Vidmimic2's six intensities as a fixed mix of the same seven-emotion
# latent that the face, voice and words show (rows: EMI_COLUMNS; columns: EMOTION_COLUMNS), so
# every EMI dimension is shown by some cue. A stand-in for training the pipeline, not a model of
# what mimicry looks like.
EMI_COLUMNS = ("Admiration", "Amusement", "Determination", "Empathic Pain", "Excitement", "Joy")
EMI_MIX = np.array([
    [0.8, 0, 0, 0, 0, 0, 0.2],      # Admiration: adoration, some surprise
    [0, 1.0, 0, 0, 0, 0, 0],        # Amusement
    [0, 0, 0.6, 0.4, 0, 0, 0],      # Determination: a tense, set face (anxiety, disgust's frown)
    [0, 0, 0, 0, 1.0, 0, 0],        # Empathic Pain
    [0, 0, 0, 0, 0, 0.4, 0.6],      # Excitement: surprise and fear's arousal
    [0.5, 0.5, 0, 0, 0, 0, 0],      # Joy: both smiles
])


@dataclass
class BuiltinReactions:
    """What `write_builtin_reactions` wrote; ids are bare ("00123").

    `labels[id]` holds the 7 intensities of every video, test videos included (data_info.csv
    leaves those empty). `boxes[id]` is the drawn face box (x, y, w, h) per frame;
    `transcripts[id]` the text also written to `transcripts_csv`.
    """

    root: Path
    fps: int
    n_frames: int
    size: tuple[int, int]
    seconds: float
    ids: dict[str, list[str]] = field(default_factory=dict)
    labels: dict[str, list[float]] = field(default_factory=dict)
    boxes: dict[str, list[Box]] = field(default_factory=dict)
    transcripts: dict[str, str] = field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def transcripts_csv(self) -> Path:
        return self.root / "transcripts.csv"

    def split_of(self, file_id: str) -> str:
        return next(split for split, ids in self.ids.items() if file_id in ids)

    def media(self, file_id: str, ext: str) -> Path:
        return self.root / self.split_of(file_id) / ext / f"{file_id}.{ext}"


def sample_intensities(rng: np.random.Generator) -> np.ndarray:
    """7 intensities: one or two clear emotions over low, mostly near-zero others."""
    values = rng.beta(1.0, 5.0, len(EMOTION_COLUMNS)) * 0.5
    for k in rng.choice(len(EMOTION_COLUMNS), size=int(rng.integers(1, 3)), replace=False):
        values[k] = rng.uniform(0.4, 1.0)
    return values.round(6)


def transcript(rng: np.random.Generator, intensities: np.ndarray) -> str:
    """Emotion words in proportion to the intensities (Poisson), among 3-8 filler words."""
    words = [str(w) for w in rng.choice(FILLERS, size=int(rng.integers(3, 9)))]
    for emotion, value in zip(EMOTION_COLUMNS, intensities):
        count = rng.poisson(WORDS_PER_UNIT * value)
        words += [str(w) for w in rng.choice(VOCABULARY[emotion], size=count)]
    rng.shuffle(words)
    return " ".join(words)


def face_params(rng: np.random.Generator, intensities: np.ndarray, n_frames: int,
                fps: float) -> np.ndarray:
    """(n_frames, len(PARAMS)): a resting face, then the emotions' blend rising and held."""
    scale = np.abs(TARGETS).max(0)
    weights = intensities @ FACE_MIX
    weights *= min(1.0, 1.2 / max(weights.sum(), 1e-6))  # several strong emotions stay a face
    rest = rng.normal(0, 0.08, len(PARAMS)) * scale
    onset, rise = rng.uniform(0, 0.4), rng.uniform(0.4, 0.9)
    t = np.arange(n_frames) / fps
    ramp = np.clip((t - onset) / rise, 0, 1)
    envelope = 0.3 + 0.7 * ramp * ramp * (3 - 2 * ramp)  # smoothstep
    jitter = rng.normal(0, 0.04, (n_frames, len(PARAMS))) * scale
    return rest + envelope[:, None] * blend(weights)[None] + jitter


def head_path(rng: np.random.Generator, n_frames: int, size: tuple[int, int]) -> tuple[list[Box], np.ndarray]:
    """Face boxes gliding between two framings (hair and neck kept in frame) and a head sway."""
    width, height = size
    boxes = []
    h0, h1 = rng.uniform(0.5, 0.62, 2) * height
    aspect = rng.uniform(0.76, 0.86)
    ends = rng.uniform(0, 1, (2, 2))
    for i in range(n_frames):
        a = 0.5 - 0.5 * np.cos(np.pi * i / max(n_frames - 1, 1))
        h = h0 + (h1 - h0) * a
        w = h * aspect
        fx, fy = ends[0] + (ends[1] - ends[0]) * a
        x = w / 4 + fx * (width - 1.5 * w)
        y = h / 8 + fy * (height - 1.125 * h)
        boxes.append((round(x), round(y), round(w), round(h)))
    sway = rng.uniform(0, 5) * np.sin(2 * np.pi * rng.uniform(0.2, 0.6) * np.arange(n_frames) / n_frames
                                      + rng.uniform(0, 2 * np.pi))
    return boxes, sway


def voice(rng: np.random.Generator, intensities: np.ndarray, seconds: float,
          rate: int = RATE) -> np.ndarray:
    """A mono float32 voice-like sound whose prosody follows the intensities (module docstring)."""
    adoration, amusement, anxiety, disgust, pain, fear, surprise = intensities
    t = np.arange(round(seconds * rate)) / rate
    # the speaker: pitch, level, and a voice that may tremble or breathe whatever the emotion
    speaker_pitch, gain = rng.uniform(110, 190), rng.uniform(0.6, 1.6)
    shaky, breathy = rng.uniform(0, 0.35), rng.uniform(0.002, 0.025)
    pitch = 1 + 0.5 * fear + 0.35 * surprise + 0.25 * amusement - 0.25 * pain
    glide = (0.5 * surprise - 0.35 * pain) * (t / seconds - 0.5)
    f0 = speaker_pitch * pitch * (1 + glide + 0.01 * np.sin(2 * np.pi * 3.3 * t))
    phase = 2 * np.pi * np.cumsum(f0) / rate
    rolloff = 1.0 + 1.5 * adoration - 0.7 * disgust  # soft timbre vs buzzy timbre
    voiced = sum(k ** -rolloff * np.sin(k * phase) for k in range(1, 9))
    voiced /= np.abs(voiced).max() + 1e-9
    syllable_rate = rng.uniform(2.5, 4.0)
    syllables = np.clip(np.sin(2 * np.pi * syllable_rate * t + rng.uniform(0, 2 * np.pi)), 0, 1) ** 0.5
    syllables = 0.35 + 0.65 * syllables
    laugh = 1 - 0.7 * amusement * (1 - np.abs(np.sin(np.pi * 5.5 * t)) ** 2)
    tremolo = 1 + (shaky + 0.5 * anxiety + 0.2 * fear) * np.sin(2 * np.pi * 9 * t)
    level = 0.12 * gain * (1 + 0.8 * amusement + 0.7 * fear + 0.7 * surprise - 0.35 * adoration
                           - 0.3 * pain)
    breath = (breathy + 0.035 * disgust) * gain * rng.normal(0, 1, t.size)
    sound = level * voiced * syllables * laugh * tremolo + breath
    return np.clip(sound, -0.99, 0.99).astype(np.float32)


@dataclass(frozen=True)
class _Video:
    """One video to draw: where, from which seed, showing which intensities."""

    mp4: Path
    audio: Path  # .wav (ABAW5) or .mp3 (Hume-Vidmimic2): soundfile writes both
    file_id: str
    seed: int
    index: int
    intensities: tuple[float, ...]
    n_frames: int
    fps: int
    size: tuple[int, int]
    seconds: float


def _draw_video(video: _Video) -> list[Box]:
    rng = item_rng(video.seed, "builtin-reactions", video.index)
    intensities = np.array(video.intensities)
    look = random_look(rng)
    scene = background(rng, video.size)
    boxes, sway = head_path(rng, video.n_frames, video.size)
    params = face_params(rng, intensities, video.n_frames, video.fps)
    frames = []
    for box, p, angle in zip(boxes, params, sway):
        frame = scene.copy()
        draw_expression(frame, box, p, look, float(angle))
        frames.append(np.asarray(frame))
    sound = voice(rng, intensities, video.seconds)
    _write_mp4(video.mp4, frames, video.fps, sound[:, None], RATE)
    video.audio.parent.mkdir(parents=True, exist_ok=True)
    if video.audio.suffix == ".mp3":
        soundfile.write(video.audio, sound, RATE, format="MP3")
    else:
        soundfile.write(video.audio, sound, RATE, subtype="PCM_16")
    return boxes


def _draw_all(videos: list[_Video], workers: int) -> list[list[Box]]:
    workers = min(workers, len(videos))
    if workers <= 1:
        return [_draw_video(v) for v in videos]
    with ProcessPoolExecutor(workers, mp_context=_context()) as pool:
        return list(pool.map(_draw_video, videos, chunksize=4))


def _write_table(result: BuiltinReactions, rng: np.random.Generator) -> None:
    ids = [i for split in SPLITS for i in result.ids[split]]
    header = ["File_ID", "Split", *EMOTION_COLUMNS, "Age", "Country"]
    rows = []
    for k in rng.permutation(len(ids)):
        file_id = ids[k]
        split = result.split_of(file_id)
        labels = ([""] * len(EMOTION_COLUMNS) if split == "test"
                  else [f"{v:.6f}" for v in result.labels[file_id]])
        rows.append([f"[{file_id}]", SPLIT_NAMES[split], *labels, str(int(rng.integers(18, 70))),
                     COUNTRIES[int(rng.integers(len(COUNTRIES)))]])
    with (result.root / "data_info.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _write_vidmimic_tables(result: BuiltinReactions) -> None:
    """train_split.csv / valid_split.csv (Filename, the 6 EMI intensities) and test_split.csv
    (Filename only), sorted by id."""
    for split, name in (("train", "train_split.csv"), ("val", "valid_split.csv"), ("test", "test_split.csv")):
        with (result.root / name).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["Filename", *EMI_COLUMNS] if split != "test" else ["Filename"])
            for file_id in sorted(result.ids[split]):
                writer.writerow([file_id, *(f"{v:.6f}" for v in result.labels[file_id])] if split != "test"
                                else [file_id])


def write_transcripts_csv(path: Path | str, texts: dict[str, str]) -> None:
    """file_id, text rows sorted by id: the feature store's transcripts.csv format."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_id", "text"])
        writer.writerows(sorted(texts.items()))


def write_builtin_reactions(root: Path | str, *, n_train: int = 120, n_val: int = 40, n_test: int = 20,
                            seconds: float = 2.0, fps: int = 8, size: tuple[int, int] = (160, 120),
                            seed: int = 0, workers: int | None = None, task: str = "eri") -> BuiltinReactions:
    """Write the built-in Hume-Reaction videos under `root` (ABAW5 layout + transcripts.csv), or
    with `task="emi"` the same kind of videos as Hume-Vidmimic2 (its layout, EMI_MIX labels).

    `size` is (width, height), even (yuv420p). `workers` processes draw (default: one per core).
    """
    if size[0] % 2 or size[1] % 2:
        raise ValueError(f"frame size must be even for yuv420p, got {size}")
    if task not in ("eri", "emi"):
        raise ValueError(f"task must be 'eri' or 'emi', got {task!r}")
    start = time.perf_counter()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    result = BuiltinReactions(root=root, fps=fps, n_frames=round(seconds * fps), size=tuple(size),
                              seconds=seconds)
    rng = item_rng(seed, "builtin-reactions-plan", 0)
    counts = {"train": n_train, "val": n_val, "test": n_test}
    numbers = rng.choice(np.arange(1, 100_000), size=sum(counts.values()), replace=False)
    names = iter(f"{n:05d}" for n in numbers)
    videos = []
    for split in SPLITS:
        result.ids[split] = [next(names) for _ in range(counts[split])]
        for file_id in result.ids[split]:
            intensities = sample_intensities(rng)
            result.labels[file_id] = [float(v) for v in intensities]
            result.transcripts[file_id] = transcript(rng, intensities)
            media = ((root / split / "mp4" / f"{file_id}.mp4", root / split / "wav" / f"{file_id}.wav")
                     if task == "eri" else (root / "raw" / f"{file_id}.mp4", root / "audio" / f"{file_id}.mp3"))
            videos.append(_Video(*media, file_id, seed, len(videos), tuple(result.labels[file_id]),
                                 result.n_frames, fps, tuple(size), seconds))
            if task == "emi":  # drawn from the same latent; labelled with its mimicry intensities
                result.labels[file_id] = [float(v) for v in (EMI_MIX @ intensities).clip(0, 1).round(6)]
    for video, boxes in zip(videos, _draw_all(videos, os.cpu_count() if workers is None else workers)):
        result.boxes[video.file_id] = boxes
    _write_table(result, rng) if task == "eri" else _write_vidmimic_tables(result)
    write_transcripts_csv(result.transcripts_csv, result.transcripts)
    result.elapsed = time.perf_counter() - start
    return result

