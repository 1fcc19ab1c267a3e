"""Reader for MXNet RecordIO image packs (insightface's `train.rec` + `train.idx`), without mxnet.

Record framing: uint32 magic 0xced7230a, uint32 whose low 29 bits are the payload length (the
top 3 bits flag multi-part records, which image packs never use), the payload, zero padding to
4 bytes. An image payload starts with the header struct '<IfQQ' (flag, label, id, id2); when
flag > 0 the label is instead `flag` float32 values following the header. The JPEG bytes come
last. In insightface packs record 0 is a header whose first label is one past the last image key.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

MAGIC = 0xCED7230A
_FRAME = struct.Struct("<II")
_HEADER = struct.Struct("<IfQQ")
_LENGTH_MASK = (1 << 29) - 1


class RecordIOError(ValueError):
    pass


@dataclass(frozen=True)
class Record:
    flag: int
    label: tuple[float, ...]
    id: int
    id2: int
    payload: bytes  # the image bytes after the header and extra labels


def read_index(idx_path: str | Path) -> dict[int, int]:
    """Parse `key<TAB>offset` lines into {key: byte offset}."""
    index: dict[int, int] = {}
    with open(idx_path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not all(p.isdigit() for p in parts):
                raise RecordIOError(f"{idx_path}:{lineno}: expected 'key<TAB>offset', got {line.strip()!r}")
            index[int(parts[0])] = int(parts[1])
    return index


def read_record(rec_path: str | Path, offset: int) -> Record:
    with open(rec_path, "rb") as f:
        f.seek(offset)
        frame = f.read(_FRAME.size)
        if len(frame) < _FRAME.size:
            raise RecordIOError(f"{rec_path}@{offset}: truncated record frame")
        magic, lrecord = _FRAME.unpack(frame)
        if magic != MAGIC:
            raise RecordIOError(f"{rec_path}@{offset}: bad magic {magic:#x}")
        if lrecord >> 29:
            raise RecordIOError(f"{rec_path}@{offset}: multi-part records are not supported")
        length = lrecord & _LENGTH_MASK
        data = f.read(length)
    if len(data) < length:
        raise RecordIOError(f"{rec_path}@{offset}: truncated payload")
    return unpack(data)


def unpack(data: bytes) -> Record:
    if len(data) < _HEADER.size:
        raise RecordIOError("payload shorter than the image header")
    flag, label, id_, id2 = _HEADER.unpack_from(data)
    pos = _HEADER.size
    labels: tuple[float, ...] = (label,)
    if flag > 0:
        end = pos + 4 * flag
        labels = struct.unpack_from(f"<{flag}f", data, pos)
        pos = end
    return Record(flag, labels, id_, id2, data[pos:])


def image_keys(rec_path: str | Path, index: dict[int, int]) -> list[int]:
    """Keys of image records: 1 .. header.label[0]-1 when record 0 is a range header."""
    if 0 in index:
        head = read_record(rec_path, index[0])
        if head.flag > 0:
            end = int(head.label[0])
            return [k for k in range(1, end) if k in index]
    return sorted(index)
