"""CASIA-WebFace: one folder per identity (as published) or insightface's RecordIO pack.

The published layout has 250x250 JPEGs in one folder per identity; insightface's aligned
112x112 pack is `train.rec` + `train.idx`, read here without mxnet.

The whole image is the face in both (already centred and aligned), so no box is needed.
"""
from __future__ import annotations

from pathlib import Path

from .. import recordio
from ..items import Item, Reject, Scan, require_dir, require_file, sample_key
from ...errors import UserError

SOURCE = "casia_webface"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


def scan(root: Path) -> Scan:
    root = Path(root)
    if (root / "train.rec").exists() or (root / "train.idx").exists():
        return _scan_recordio(root)
    if (root / "CASIA-WebFace").is_dir():
        root = root / "CASIA-WebFace"
    return _scan_folders(root)


def _scan_folders(root: Path) -> Scan:
    require_dir(root, "CASIA-WebFace: one folder per identity, or train.rec + train.idx")
    items = []
    for identity in sorted(p for p in root.iterdir() if p.is_dir()):
        for image in sorted(identity.iterdir()):
            if image.suffix.lower() not in IMAGE_SUFFIXES:
                continue  # Thumbs.db and other clutter of the published archive
            relpath = f"{identity.name}/{image.name}"
            items.append(Item(sample_key(SOURCE, relpath), "train", relpath, str(image),
                              meta={"identity": identity.name}))
    if not items:
        raise UserError(f"{root}: no identity folders with images; expected CASIA-WebFace/<identity>/<n>.jpg or train.rec + train.idx")
    return Scan(SOURCE, root, items, [], [])


def _scan_recordio(root: Path) -> Scan:
    rec = require_file(root / "train.rec", "insightface RecordIO pack train.rec beside train.idx")
    idx = require_file(root / "train.idx", "insightface RecordIO index train.idx (lines 'key<TAB>offset')")
    try:
        index, repeated = recordio.read_index(idx)
        keys = recordio.image_keys(rec, index)
    except recordio.RecordIOError as err:
        raise UserError(f"{err}") from None
    items = []
    for key in keys:
        relpath = f"train.rec#{key}"
        # the identity label is read from the record itself when the image is loaded
        items.append(Item(f"{SOURCE}-rec_{key}", "train", relpath, str(rec), offset=index[key]))
    if not items:
        raise UserError(f"{rec}: no image records found")
    rejects = [Reject(f"train.rec#{key}", "train", "duplicate", note) for key, note in repeated]
    return Scan(SOURCE, root, items, rejects, [idx])
