"""Reading converted shards back, independently of the stream code under test."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def read_samples(folder: Path) -> dict[str, dict]:
    """key -> {"jpg": bytes, "meta": dict, "cls": int | None, "shard": name} over every shard."""
    manifest = json.loads((folder / "manifest.json").read_text())
    out: dict[str, dict] = {}
    for split in manifest["splits"].values():
        for entry in split["shards"]:
            with tarfile.open(folder / entry["name"]) as tar:
                for member in tar.getmembers():
                    key, ext = member.name.split(".", 1)
                    data = tar.extractfile(member).read()
                    sample = out.setdefault(key, {"shard": entry["name"], "cls": None})
                    if ext == "json":
                        sample["meta"] = json.loads(data)
                    elif ext == "cls":
                        sample["cls"] = int(data)
                    else:
                        sample[ext] = data
    return out


def centre_rgb(jpg: bytes) -> np.ndarray:
    img = np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB")).astype(int)
    h, w = img.shape[:2]
    return img[h // 2 - 1:h // 2 + 2, w // 2 - 1:w // 2 + 2].reshape(-1, 3).mean(0)
