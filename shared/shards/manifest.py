"""The manifest written beside every set of face shards (`manifest.json`).

Format `face-shards/1`, plain JSON so tools outside the suite can read it:

    {
      "format": "face-shards/1",
      "source": "affectnet",                      # also the prefix of every sample key
      "settings": {"size": 256, "margin": 0.2, "quality": 95, "shard_size": 1000, "seed": 0},
      "face_crop": {"size": 256, "margin": 0.2, "resample": "bicubic",   # shared.face_crop's contract
                    "square": "longer-side", "box": "xyxy"},
      "created_by": {"package": ..., "version": ..., "git_commit": ...},
      "root": "/data/AffectNet",                  # the raw dataset converted
      "inputs": {"training.csv": "<sha256>", ...},  # list files read
      "splits": {
        "train": {"holdout": false, "samples": 123, "shards": [
            {"name": "affectnet-train-000000.tar", "samples": 998, "bytes": 2.1e7,
             "sha256": "...", "plan": "<digest of the keys planned for it>",
             "classes": {"0": 120, "1": 431, ...},   # samples per class code (sources with labels)
             "rejects": [{"path": ..., "reason": ..., "detail": ...}]}, ...]},
        "val": {"holdout": true, ...}             # never selectable for pretraining
      },
      "rejects": {"counts": {"no-face": 3, ...}, "file": "rejects.csv"},
      "complete": true                            # false while a conversion is under way
    }

Each sample in a shard is `<key>.jpg` (the square face crop) and `<key>.json` (metadata:
source, split, path, box (the dataset's face box as x0, y0, x1, y1, or None), crop_box,
orig_size and the dataset's labels); AffectNet samples also carry `<key>.cls` (the expression
code) for webdataset's usual label convention.
"""
from __future__ import annotations

import json
import posixpath
from pathlib import Path
from typing import Any

import fsspec

from ..errors import UserError
from ..recognise import described

FORMAT = "face-shards/1"
NAME = "manifest.json"


def load(location: str | Path) -> dict[str, Any]:
    """Read a manifest from a shard folder or a manifest path, local or any fsspec URL."""
    url = str(location)
    if not url.endswith(".json"):
        url = posixpath.join(url.rstrip("/"), NAME)
    try:
        with fsspec.open(url, "r") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{url}: no shard manifest; expected a folder written by face-shards"
                        f"{described(str(location))}") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{url}: not valid JSON ({err})") from None
    if manifest.get("format") != FORMAT:
        raise UserError(f"{url}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def folder_of(location: str | Path) -> str:
    url = str(location)
    return posixpath.dirname(url) if url.endswith(".json") else url.rstrip("/")


def shards(manifest: dict[str, Any], splits: list[str] | None = None) -> list[dict[str, Any]]:
    """The shard entries of the requested splits (all when None), in order, each with its split."""
    available = manifest["splits"]
    chosen = list(available) if splits is None else splits
    unknown = [s for s in chosen if s not in available]
    if unknown:
        raise UserError(f"splits {unknown} not in the {manifest['source']} shards; available: {sorted(available)}")
    return [{**entry, "split": s} for s in chosen for entry in available[s]["shards"]]
