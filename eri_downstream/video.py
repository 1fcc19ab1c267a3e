"""Video frames as a player shows them, from as much of the file as decodes.

Two things real recordings carry that a plain decode gets wrong:

- **orientation**: phones store frames sideways and put a display matrix in the track header
  (PyAV: `frame.rotation`, the DISPLAYMATRIX side data); a player turns (and mirrors) the
  picture by it, and so does `VideoReader`: a sideways face is no face to a detector;
- **damage**: a file cut short (a failed copy, a full disk) or corrupt part-way decodes up to
  the damage. `VideoReader` keeps every frame that decoded and records what stopped it in
  `damage`; only a video of which no frame decodes is a `VideoError`.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterator

import av
import numpy as np
from PIL import Image

from shared.errors import RunError, UserError


class VideoError(RunError):
    """A video that cannot be used: missing, undecodable, without a video stream or frames."""


def display_matrix(frame: av.VideoFrame) -> tuple[float, float, float, float] | None:
    """(a, b, c, d) of the frame's display matrix (16.16 fixed point, normalised), or None.

    FFmpeg's convention: a stored pixel (p, q) (column, row) is shown at
    (a * p + c * q, b * p + d * q), shifted back into the picture.
    """
    side = frame.side_data.get("DISPLAYMATRIX") if frame.side_data else None
    if side is None or side.buffer_size < 36:
        return None
    a, b, _, c, d, _, _, _, _ = struct.unpack("<9i", bytes(side))
    return tuple(v / 65536 for v in (a, b, c, d))


def upright(image: np.ndarray, matrix: tuple[float, float, float, float] | None) -> np.ndarray:
    """HxWx3 stored pixels -> the picture as displayed. Quarter turns and mirrors are exact
    index permutations; any other angle is rotated by PIL (bilinear, the canvas enlarged)."""
    if matrix is None:
        return image
    a, b, c, d = (round(v) if abs(v - round(v)) < 1e-3 else v for v in matrix)
    if (a, b, c, d) == (1, 0, 0, 1):
        return image
    if {abs(a), abs(d)} == {0} and {abs(b), abs(c)} == {1}:  # a quarter turn: axes swap
        out = image.transpose(1, 0, 2)  # shown column = c * row, shown row = b * column
        out = out[:, ::-1] if c < 0 else out
        return np.ascontiguousarray(out[::-1] if b < 0 else out)
    if {abs(b), abs(c)} == {0} and {abs(a), abs(d)} == {1}:  # a half turn or a mirror
        out = image[:, ::-1] if a < 0 else image
        return np.ascontiguousarray(out[::-1] if d < 0 else out)
    degrees = float(np.degrees(np.arctan2(b, a)))  # counter-clockwise as displayed, y down
    return np.asarray(Image.fromarray(image).rotate(-degrees, resample=Image.BILINEAR, expand=True))


class VideoReader:
    """Decoded, upright frames of a video, sampled at `fps` (every frame when None).

    Each iteration decodes the file anew, so a caller can make two passes (detect, then crop)
    without holding a whole video of full-size frames in memory. After an iteration, `damage`
    is None, or says where decoding stopped and why (the frames before were yielded).
    """

    def __init__(self, path: str | Path, fps: float | None = None):
        if fps is not None and fps <= 0:
            raise UserError(f"frame sampling rate must be positive, got {fps}")
        self.path, self.fps, self.damage = str(path), fps, None
        with self._open() as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            self.source_fps = float(rate) if rate else 0.0

    def _open(self) -> av.container.InputContainer:
        try:
            container = av.open(self.path)
        except (av.error.FFmpegError, OSError) as err:
            raise VideoError(f"{self.path}: cannot open video ({err})") from err
        if not container.streams.video:
            container.close()
            raise VideoError(f"{self.path}: no video stream (or an empty one)")
        return container

    def __iter__(self) -> Iterator[tuple[int, float, np.ndarray]]:
        """(decoding-order index, seconds, HxWx3 uint8 RGB as displayed) of each kept frame."""
        period = 1 / self.source_fps if self.source_fps else 0.0
        start, kept, decoded = None, 0, 0
        self.damage = None
        with self._open() as container:
            try:
                for index, frame in enumerate(container.decode(video=0)):
                    decoded = index + 1
                    t = float(frame.time) if frame.time is not None else index * period
                    start = t if start is None else start
                    if self.fps is None or t >= start + kept / self.fps - period / 2:
                        kept += 1
                        yield index, t, upright(frame.to_ndarray(format="rgb24"), display_matrix(frame))
            except av.error.FFmpegError as err:
                if not decoded:
                    raise VideoError(f"{self.path}: cannot decode video ({err})") from err
                self.damage = f"decoding stopped after frame {decoded} ({err}); kept the {decoded} decoded"


def decode_frames(path: str | Path, fps: float | None = None) -> tuple[list[np.ndarray], list[float], float]:
    """All kept frames (HxWx3 uint8 RGB, upright), their times in seconds, and the frame rate."""
    reader = VideoReader(path, fps)
    decoded = list(reader)
    if not decoded:
        raise VideoError(f"{path}: the video has no frames")
    return [image for _, _, image in decoded], [t for _, t, _ in decoded], reader.source_fps
