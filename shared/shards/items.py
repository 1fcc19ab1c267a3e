"""What a dataset reader hands the shard writer: items to crop, and inputs it rejected."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def sample_key(source: str, relpath: str) -> str:
    """A readable, dot-free sample key: webdataset splits a key at its first dot."""
    stem = relpath.rsplit(".", 1)[0] if "." in relpath.rsplit("/", 1)[-1] else relpath
    return f"{source}-{_UNSAFE.sub('_', stem).strip('_')}"


@dataclass
class Item:
    """One face to write. `path` is how the dataset names it (list-file path, `train.rec#17`)."""

    key: str
    split: str
    path: str
    file: str  # the file holding the image bytes
    offset: int | None = None  # byte offset of a RecordIO record inside `file`; with `column`, the row
    column: str | None = None  # image column of a Hugging Face Arrow `file` (sources.hf)
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1 in image pixels (shared.face_crop)
    meta: dict[str, Any] = field(default_factory=dict)
    origin: str = ""  # where the dataset lists it ("training.csv line 12"), for reject details


@dataclass
class Reject:
    path: str
    split: str
    reason: str  # one of REJECT_REASONS
    detail: str = ""


# why an input was left out: the values of rejects.csv's `reason` column
REJECT_REASONS = ("no-face", "bad-row", "missing-image", "unreadable-image", "unsupported-pixels",
                  "duplicate", "filtered")


@dataclass
class Scan:
    """A dataset's items, the rows it rejected while parsing, and its provenance."""

    source: str
    root: Path
    items: list[Item]
    rejects: list[Reject]
    list_files: list[Path]  # hashed into the manifest
    holdout_splits: set[str] = field(default_factory=set)  # never selectable for pretraining
    info: dict[str, Any] = field(default_factory=dict)  # how the dataset was read (manifest "dataset")


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise UserError(f"{path}: missing; expected {what}")
    return path


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise UserError(f"{path}: not a folder; expected {what}")
    return path


def find_dir(root: Path, name: str, what: str) -> Path:
    """`root/name`, or `root/<one folder>/name` where an archive extracts one level down
    (AffectNet's `Manually_Annotated/Manually_Annotated_Images`); more than one such folder
    is a UserError naming them, not a guess."""
    if (root / name).is_dir():
        return root / name
    found = sorted(p / name for p in root.iterdir() if (p / name).is_dir()) if root.is_dir() else []
    if len(found) > 1:
        raise UserError(f"{root}: {name} found in {len(found)} places ({', '.join(map(str, found))}); "
                        "point to the folder that holds the one to convert")
    if not found:
        raise UserError(f"{root / name}: not a folder (nor one level down); expected {what}")
    return found[0]
