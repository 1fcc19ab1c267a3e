"""Audio for stage 3a: 16 kHz mono waves from .wav / .mp4, and HuBERT features over a whole clip.

The paper's audio branch reads HuBERT's last hidden layer (768-d, 50 frames per second) at
16 kHz; `subsample_steps` is the public code's variant that keeps at most 800 steps.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import struct
from pathlib import Path

import av
import numpy as np
import soundfile
import torch
from scipy.signal import resample_poly

from eri_downstream.store import fingerprint_files
from shared.errors import UserError

log = logging.getLogger(__name__)
SAMPLE_RATE = 16000
SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg"}
WEIGHT_SUFFIXES = (".safetensors", ".bin")


class AudioError(UserError):
    """A media file without a readable audio track: the clip is reported as a failure, not a crash."""


# -- loading ---------------------------------------------------------------------------------
def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, damage: list[str] | None = None) -> np.ndarray:
    """float32 (N,) mono at `sample_rate`; channels are averaged, other rates resampled.

    WAV/FLAC go through soundfile (exact, fast); anything else (the .mp4 audio track) through
    PyAV, which bundles FFmpeg, so no system ffmpeg is needed. A file damaged part-way (cut
    short, corrupt) gives the audio that decodes, and a note on what is missing is appended
    to `damage` (logged when no list is given); only a file of which nothing decodes is an
    AudioError.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    notes: list[str] = []
    if path.suffix.lower() in SOUNDFILE_SUFFIXES:
        wave = _load_soundfile(path, sample_rate, notes)
    else:
        wave = _load_pyav(path, sample_rate, notes)
    if damage is not None:
        damage += notes
    for note in notes if damage is None else ():
        log.warning("%s: %s", path, note)
    return wave


def _load_soundfile(path: Path, sample_rate: int, damage: list[str]) -> np.ndarray:
    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # (N, C)
    except soundfile.SoundFileError as err:
        raise AudioError(f"{path}: cannot read audio ({err})") from err
    declared = _wav_declared_frames(path) if path.suffix.lower() == ".wav" else None
    if declared is not None and len(data) < declared:  # libsndfile reads a cut WAV without a word
        damage.append(f"the WAV holds {len(data)} of the {declared} frames its header declares (cut short); "
                      f"kept the {len(data)}")
    return _resample(data.mean(axis=1), rate, sample_rate)


def _wav_declared_frames(path: Path) -> int | None:
    """Frames the RIFF header's `data` chunk declares (None when unknown: streamed, RF64, odd)."""
    with open(path, "rb") as f:
        if f.read(12)[8:12] != b"WAVE":
            return None
        block_align = None
        while len(head := f.read(8)) == 8:
            chunk, size = head[:4], struct.unpack("<I", head[4:])[0]
            if chunk == b"fmt ":
                block_align = struct.unpack("<12xH", f.read(14))[0]
                f.seek(size - 14 + size % 2, 1)
            elif chunk == b"data":
                return size // block_align if block_align and 0 < size < 0xFFFFFFFF else None
            else:
                f.seek(size + size % 2, 1)
    return None


def _resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Polyphase resampling (anti-aliased) by the reduced ratio target / rate."""
    if rate == target:
        return wave.astype(np.float32, copy=False)
    g = math.gcd(rate, target)
    return resample_poly(wave, target // g, rate // g).astype(np.float32)


def _load_pyav(path: Path, sample_rate: int, damage: list[str]) -> np.ndarray:
    """Decode the first audio stream; resample to planar float at `sample_rate`, keeping the
    channels so that the downmix is a plain average (FFmpeg's own mono mix weights channels)."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(f"{path}: no audio track")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="fltp", rate=sample_rate)
            pieces = []  # each (C, n)
            try:
                for frame in container.decode(stream):
                    pieces += [out.to_ndarray() for out in resampler.resample(frame)]
            except av.error.FFmpegError as err:  # damaged part-way: keep what decoded
                if not pieces:
                    raise
                seconds = sum(p.shape[1] for p in pieces) / sample_rate
                damage.append(f"audio decoding stopped after {seconds:.2f} s ({err}); kept those")
            pieces += [out.to_ndarray() for out in resampler.resample(None)]  # flush
    except av.error.FFmpegError as err:
        raise AudioError(f"{path}: cannot decode audio ({err})") from err
    if not pieces:
        return np.zeros(0, np.float32)
    return np.concatenate(pieces, axis=1).mean(axis=0).astype(np.float32)  # (N,)


# -- features --------------------------------------------------------------------------------
class AudioEncoder:
    """A speech model's hidden states (HuBERT by default) over a whole clip: [T, hidden]."""

    def __init__(self, model: str = "facebook/hubert-base-ls960", device: str = "cpu",
                 dtype: torch.dtype | None = None, chunk_seconds: float = 30.0, layer: int = -1):
        from transformers import AutoFeatureExtractor, AutoModel

        self.name = model
        self.device = torch.device(device)
        self.extractor = AutoFeatureExtractor.from_pretrained(model)
        self.model = AutoModel.from_pretrained(model, dtype=dtype).to(self.device).eval()
        layers = self.model.config.num_hidden_layers
        if not -layers - 1 <= layer <= layers:
            raise UserError(f"{model}: layer {layer} out of range (hidden states 0..{layers})")
        self.layer = layer
        self.sample_rate: int = self.extractor.sampling_rate
        # a frame sees `receptive_field` samples and frames start every `hop` samples
        kernels, strides = self.model.config.conv_kernel, self.model.config.conv_stride
        self.hop = math.prod(strides)
        self.receptive_field = _receptive_field(kernels, strides)
        if chunk_seconds <= 0:
            raise UserError(f"chunk_seconds must be positive, got {chunk_seconds}")
        self.chunk_frames = max(1, int(chunk_seconds * self.frames_per_second))

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop  # 16000 / 320 = 50 for HuBERT

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def num_frames(self, num_samples: int) -> int:
        """Frames the convolutional front end makes from `num_samples` (>= receptive field)."""
        return (num_samples - self.receptive_field) // self.hop + 1

    @torch.no_grad()
    def encode(self, wave: np.ndarray) -> torch.Tensor:
        """float32 [T, hidden] for a mono wave at `sample_rate`, T = num_frames(len(wave)).

        Attention cost and activation memory grow with the square of the length, so a long
        clip runs in chunks of about `chunk_seconds`, cut on frame boundaries: each chunk
        covers exactly the samples of its frames (neighbours overlap by receptive_field - hop
        samples), so the concatenation has as many frames, on the same sample grid, as one
        pass over the whole clip. Values differ from one pass (most near a cut), since
        attention, the positional convolution and the group norm only see the chunk.
        """
        wave = np.asarray(wave, dtype=np.float32).reshape(-1)
        if wave.size < self.receptive_field:  # too short for one frame: pad to exactly one
            wave = np.pad(wave, (0, self.receptive_field - wave.size))
        # normalise once over the whole clip (when the extractor does), not per chunk
        values = self.extractor(wave, sampling_rate=self.sample_rate, return_tensors="np").input_values[0]
        parts = [self._forward(values[a * self.hop:(b - 1) * self.hop + self.receptive_field])
                 for a, b in even_ranges(self.num_frames(values.size), self.chunk_frames)]
        return torch.cat(parts)  # [T, hidden]

    def _forward(self, values: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(values)[None].to(self.device, self.model.dtype)  # [1, n]
        out = self.model(input_values=x, output_hidden_states=True)
        return out.hidden_states[self.layer][0].float().cpu()  # [t, hidden]


def _receptive_field(kernels, strides) -> int:
    """Samples seen by one output frame of a stack of strided 1-D convolutions (400 for HuBERT)."""
    field, jump = 1, 1
    for k, s in zip(kernels, strides):
        field += (k - 1) * jump
        jump *= s
    return field


def even_ranges(total: int, most: int) -> list[tuple[int, int]]:
    """[start, end) ranges of nearly equal size <= `most` covering range(total): no tiny last chunk."""
    count = max(1, math.ceil(total / most))
    edges = [round(i * total / count) for i in range(count + 1)]
    return list(zip(edges[:-1], edges[1:]))


def subsample_steps(features: torch.Tensor, max_steps: int = 800) -> torch.Tensor:
    """At most `max_steps` rows of [T, D], evenly spaced (the public code's cap on HuBERT length)."""
    steps = features.shape[0]
    if steps <= max_steps:
        return features
    index = torch.linspace(0, steps - 1, max_steps).round().long()
    return features[index]  # [max_steps, D]


# -- cache staleness -------------------------------------------------------------------------
def model_fingerprint(model: str) -> str:
    """Which weights made a cache: a hash of the config and weight files of the local folder, or
    of the hub cache snapshot an id resolves to; the id's hash when neither is on disk."""
    folder = Path(model) if os.path.isdir(model) else _hub_snapshot(model)
    if folder is not None:
        files = [folder / "config.json", *sorted(p for p in folder.iterdir() if p.name.endswith(WEIGHT_SUFFIXES))]
        files = [p for p in files if p.is_file()]
        if files:
            return fingerprint_files(*files)
    return hashlib.sha256(model.encode()).hexdigest()[:16]


def _hub_snapshot(model_id: str) -> Path | None:
    """The cached snapshot folder of a hub id, without network access (None when not cached)."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(model_id, "config.json")
    return Path(config).parent if isinstance(config, str) else None
