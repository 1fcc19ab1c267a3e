"""A tiny CASIA-WebFace in both published forms: identity folders and insightface RecordIO.

Folder form::

    CASIA-WebFace/<7-digit id>/<3-digit>.jpg      250x250, face centred (box None)

plus one garbage `.jpg` in the first identity's folder ("unreadable-image") and a
`Thumbs.db` in the last one, which a converter must skip silently (not an image, not a reject).

RecordIO form (insightface `faces_webface_112x112`)::

    train.rec   records: uint32 magic 0xced7230a, uint32 (cflag << 29) | length,
                payload, zero padding to 4 bytes; a payload holding the magic word at a
                4-byte-aligned offset is cut there into parts (cflag 1, 2, 3), as MXNet's
                writer (dmlc-core RecordIOWriter::WriteRecord) does
    train.idx   "key\\toffset\\n" per record, offset of the record's magic
    property    "<n_ids>,112,112"

Payloads start with struct '<IfQQ' (flag, label, id, id2), then `flag` float32 labels.
Record 0: flag 2, labels [N + 1, N + 1 + n_ids]; keys 1..N: images (flag 0, label = identity
index); keys N + 1 .. N + n_ids: one per identity, flag 2, labels [first key, end key) and no
image. The last image of identity 0 has a garbage JPEG ("unreadable-image"). The first two
images of identity 1 carry the magic word in a JPEG comment: one once (a record of two parts),
one twice (three parts); both are good faces.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from shared.synthetic.faces import face_jpeg, random_skin
from shared.synthetic.layouts.common import (
    Planted, centred_box, corrupt_jpeg, dataset_rng, write_bytes,
)

FOLDER_ROOT = "CASIA-WebFace"
FOLDER_SIZE = (250, 250)
REC_SIZE = (112, 112)
RECORD_MAGIC = 0xCED7230A


def write_casia_folders(root: Path, seed: int = 0, n_ids: int = 4, per_id: int = 3) -> Planted:
    """Write `root/CASIA-WebFace/<id>/<nnn>.jpg`; keys are `<id>/<nnn>.jpg`, split "train".

    faces[key]["identity"] is the folder name, kept as a string because the zero padding is
    part of the published identity name.
    """
    root = Path(root)
    rng = dataset_rng(seed, "casia-folders")
    planted = Planted(root=root, image_dir=root / FOLDER_ROOT)
    ids = sorted(f"{int(i):07d}" for i in rng.choice(10_000_000, size=n_ids, replace=False))
    for identity in ids:
        for index in range(1, per_id + 1):
            key = f"{identity}/{index:03d}.jpg"
            skin = random_skin(rng)
            box = centred_box(rng, FOLDER_SIZE, 0.44, 0.56)
            write_bytes(planted.image_dir / key, face_jpeg(rng, FOLDER_SIZE, box, skin))
            planted.listed("train")
            planted.accept(key, "train", box=None, skin=skin, identity=identity)
    corrupt_key = f"{ids[0]}/{per_id + 1:03d}.jpg"
    write_bytes(planted.image_dir / corrupt_key, corrupt_jpeg(rng))
    planted.listed("train")
    planted.reject("unreadable-image", corrupt_key)
    write_bytes(planted.image_dir / ids[-1] / "Thumbs.db", rng.bytes(512))
    return planted


def _payload(flag: int, label: float, key: int, extra: tuple[float, ...] = (),
             image: bytes = b"") -> bytes:
    """An MXNet IRHeader ('<IfQQ'), `flag` extra float32 labels, then the image bytes."""
    header = struct.pack("<IfQQ", flag, label, key, 0)
    return header + struct.pack(f"<{len(extra)}f", *extra) + image


def _record(payload: bytes) -> bytes:
    """Frame one payload as dmlc-core's RecordIOWriter does: cut at every 4-byte-aligned magic
    word (which is dropped), parts flagged 1 (first), 2 (middle), 3 (last); 0 when whole."""
    magic = struct.pack("<I", RECORD_MAGIC)
    cuts = [i for i in range(0, len(payload) - len(payload) % 4, 4) if payload[i:i + 4] == magic]
    starts, out = [0] + [i + 4 for i in cuts], []
    for n, (start, end) in enumerate(zip(starts, cuts + [len(payload)])):
        cflag = 0 if not cuts else 1 if n == 0 else 3 if n == len(cuts) else 2
        out.append(struct.pack("<II", RECORD_MAGIC, (cflag << 29) | (end - start)) + payload[start:end])
    return b"".join(out) + b"\0" * (-len(payload) % 4)


def _with_magic(jpeg: bytes, times: int) -> bytes:
    """The JPEG with a comment segment that puts the RecordIO magic word `times` times at
    4-byte-aligned payload offsets (the payload starts with the 24-byte header; the comment's
    text starts 6 bytes into the JPEG, so 2 bytes of padding align it)."""
    magic = struct.pack("<I", RECORD_MAGIC)
    text = b"\0\0" + b"abcd".join([magic] * times) + b"\0\0"
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + jpeg[2:]


def _image_payloads(rng: np.random.Generator, planted: Planted, n_ids: int,
                    per_id: int) -> tuple[list[bytes], list[tuple[int, int]]]:
    """Payloads of keys 1..N and each identity's [first, end) key range."""
    payloads, ranges = [], []
    for identity in range(n_ids):
        first = len(payloads) + 1
        for index in range(per_id):
            key = len(payloads) + 1
            rec_key = f"train.rec#{key}"
            skin = random_skin(rng)
            box = centred_box(rng, REC_SIZE, 0.62, 0.72)
            planted.listed("train")
            if identity == 0 and index == per_id - 1:
                image = corrupt_jpeg(rng)
                planted.reject("unreadable-image", rec_key)
            else:
                image = face_jpeg(rng, REC_SIZE, box, skin)
                if identity == 1 and index < 2:  # split into 2 and 3 parts by the writer
                    image = _with_magic(image, times=index + 1)
                planted.accept(rec_key, "train", box=None, skin=skin, identity=identity)
            payloads.append(_payload(0, float(identity), key, image=image))
        ranges.append((first, len(payloads) + 1))
    return payloads, ranges


def write_casia_recordio(root: Path, seed: int = 0, n_ids: int = 3, per_id: int = 3) -> Planted:
    """Write insightface's `train.rec`, `train.idx` and `property` under `root`.

    Keys are `train.rec#<record key>`, split "train"; faces[key]["identity"] is the int label.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = dataset_rng(seed, "casia-recordio")
    planted = Planted(root=root, image_dir=root)
    images, ranges = _image_payloads(rng, planted, n_ids, per_id)
    n_images = len(images)
    head = _payload(2, 0.0, 0, extra=(n_images + 1, n_images + 1 + n_ids))
    identities = [_payload(2, 0.0, n_images + 1 + i, extra=span) for i, span in enumerate(ranges)]
    offset, index_lines = 0, []
    with (root / "train.rec").open("wb") as rec:
        for key, payload in enumerate([head, *images, *identities]):
            index_lines.append(f"{key}\t{offset}\n")
            offset += rec.write(_record(payload))
    (root / "train.idx").write_text("".join(index_lines))
    (root / "property").write_text(f"{n_ids},112,112\n")
    return planted
