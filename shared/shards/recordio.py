"""Reader for MXNet RecordIO image packs (insightface's `train.rec` + `train.idx`), without mxnet.

Record framing (dmlc-core's recordio): uint32 magic 0xced7230a, uint32 `lrec` whose low 29 bits
are a length and whose top 3 bits are `cflag`, the bytes, zero padding to 4 bytes. The writer
never lets the magic word appear at a 4-byte-aligned offset of a payload: it cuts the payload
there, drops those 4 bytes and writes the pieces as consecutive parts with cflag 1 (first),
2 (middle) and 3 (last); cflag 0 is a record in one part. The reader joins the parts with the
magic word between them, as dmlc's RecordIOReader does. Packs of millions of JPEGs hold such
records (any 4 aligned bytes of a JPEG may happen to equal the magic).

An image payload starts with the header struct '<IfQQ' (flag, label, id, id2); when flag > 0 the label is instead `flag` float32 values following the header. The JPEG bytes come
last. In insightface packs record 0 is a header whose first label is one past the last image key.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from ..tables import field_lines

MAGIC = 0xCED7230A
_FRAME = struct.Struct("<II")
_HEADER = struct.Struct("<IfQQ")
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LENGTH_MASK = (1 << 29) - 1
WHOLE, FIRST, MIDDLE, LAST = 0, 1, 2, 3  # cflag values


class RecordIOError(ValueError):
    pass


@dataclass(frozen=True)
class Record:
    flag: int
    label: tuple[float, ...]
    id: int
    id2: int
    payload: bytes  # the image bytes after the header and extra labels


def read_index(idx_path: str | Path) -> tuple[dict[int, int], list[tuple[int, str]]]:
    """Parse `key<TAB>offset` lines into {key: byte offset}, and (key, note) per line that
    repeats an earlier key (the first line wins: a repeated key is not a second image)."""
    index: dict[int, int] = {}
    repeated: list[tuple[int, str]] = []
    for lineno, parts in field_lines(idx_path, "insightface's train.idx: lines 'key<TAB>offset'"):
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise RecordIOError(f"{idx_path}:{lineno}: expected 'key<TAB>offset', got {' '.join(parts)!r}")
        key, offset = int(parts[0]), int(parts[1])
        if key in index:
            repeated.append((key, f"{Path(idx_path).name} line {lineno}: key {key} again (offset {offset}; "
                                  f"first at offset {index[key]})"))
            continue
        index[key] = offset
    return index, repeated


def read_record(rec_path: str | Path, offset: int) -> Record:
    """The record starting at `offset`, its parts joined."""
    with open(rec_path, "rb") as f:
        f.seek(offset)
        return unpack(_read_parts(f, f"{rec_path}@{offset}"))


def _read_parts(f, where: str) -> bytes:
    pieces, expected = [], (WHOLE, FIRST)
    while True:
        frame = f.read(_FRAME.size)
        if len(frame) < _FRAME.size:
            raise RecordIOError(f"{where}: truncated record frame")
        magic, lrecord = _FRAME.unpack(frame)
        if magic != MAGIC:
            raise RecordIOError(f"{where}: bad magic {magic:#x}")
        cflag, length = lrecord >> 29, lrecord & _LENGTH_MASK
        if cflag not in expected:
            raise RecordIOError(f"{where}: part with cflag {cflag} where {' or '.join(map(str, expected))} "
                                "was expected (a damaged multi-part record)")
        data = f.read(length)
        if len(data) < length:
            raise RecordIOError(f"{where}: truncated payload")
        f.seek(-length % 4, 1)  # padding (only the last part of a record has any)
        pieces.append(data)
        if cflag in (WHOLE, LAST):
            return _MAGIC_BYTES.join(pieces)
        expected = (MIDDLE, LAST)


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
