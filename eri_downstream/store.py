"""The feature store: what stage 3a writes and stage 3b trains from.

One folder, readable without this project (tarfile, csv, safetensors):

    <store>/videos.csv                   the normalised table: file_id (string, zeros kept), split
                                         (train/val/test), the 7 emotion intensities, age, country,
                                         mp4, wav (empty when missing)
    <store>/faces/<file_id>.tar          face crops of the main subject: NNNNNN.jpg (224x224) + track.json
                                         (times, boxes, detection scores, detected/filled flags, status)
    <store>/visual/<file_id>.safetensors "features" float16 [T, D]: the frozen encoder on every stored face
    <store>/audio/<file_id>.safetensors  "features" float16 [T, 768]: HuBERT, 50 frames per second
    <store>/transcripts.csv              file_id, text: speech-to-text output, to inspect and correct
    <store>/text/<file_id>.safetensors   "features" float16 [T, 1024]: DeBERTa tokens; [1, 1024] zeros
                                         where a clip has no speech
    <store>/<step>_failures.csv          file_id, reason: what a step could not do, and why

Every .safetensors carries string metadata: the model that made it ("source"), a
"fingerprint" of that model's weights (a cache made by another encoder is stale and is
recomputed), "status" ("ok", or "no-face" for a video without any face: zeros [1, D]) and, for
text, the sha1 of the transcript it encodes (an edited transcript makes it stale).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open

from shared.atomic import write_csv, write_safetensors
from shared.tables import csv_records

FEATURE_STEPS = ("visual", "audio", "text")


class FeatureStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def table(self) -> Path:
        return self.root / "videos.csv"

    @property
    def transcripts(self) -> Path:
        return self.root / "transcripts.csv"

    def faces(self, file_id: str) -> Path:
        return self.root / "faces" / f"{file_id}.tar"

    def features(self, step: str, file_id: str) -> Path:
        return self.root / step / f"{file_id}.safetensors"

    def metadata(self, step: str, file_id: str) -> dict[str, str] | None:
        """The stored metadata, or None when the file is absent or unreadable (a partial write)."""
        path = self.features(step, file_id)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                return dict(f.metadata() or {})
        except Exception:  # noqa: BLE001 - a truncated file is simply not done
            return None

    def is_current(self, step: str, file_id: str, **expected: str) -> bool:
        """Done, and made from what is expected now (fingerprint, transcript hash, ...)."""
        meta = self.metadata(step, file_id)
        return meta is not None and all(meta.get(k) == v for k, v in expected.items())

    def save(self, step: str, file_id: str, features: torch.Tensor, **metadata) -> Path:
        """float16 [T, D] with string metadata, written atomically and canonically (shared.atomic)."""
        meta = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in metadata.items()}
        return write_safetensors(self.features(step, file_id), {"features": features.detach().to("cpu", torch.float16)},
                                 meta)

    def load(self, step: str, file_id: str) -> tuple[torch.Tensor, dict[str, str]]:
        with safe_open(str(self.features(step, file_id)), framework="pt") as f:
            return f.get_tensor("features"), dict(f.metadata() or {})

    # -- transcripts ---------------------------------------------------------------------
    def read_transcripts(self) -> dict[str, str]:
        """file_id -> text; the file may have been edited in a spreadsheet (BOM, CRLF: shared.tables)."""
        if not self.transcripts.is_file():
            return {}
        return read_transcripts(self.transcripts)

    def write_transcripts(self, texts: dict[str, str]) -> None:
        write_csv(self.transcripts, ["file_id", "text"], sorted(texts.items()))

    # -- failures ------------------------------------------------------------------------
    def read_failures(self, step: str) -> dict[str, str]:
        """file_id -> reason of `<step>_failures.csv` ({} when the step never ran)."""
        path = self.root / f"{step}_failures.csv"
        if not path.is_file():
            return {}
        return {row["file_id"]: row["reason"] for _, row in csv_records(path, ["file_id", "reason"], strip=False)}

    def write_failures(self, step: str, failures: dict[str, str]) -> Path:
        return write_csv(self.root / f"{step}_failures.csv", ["file_id", "reason"], sorted(failures.items()))


def read_transcripts(path: str | Path) -> dict[str, str]:
    """file_id -> text of a transcripts.csv (columns file_id, text); the text is kept as written."""
    return {row["file_id"].strip(): row["text"]
            for _, row in csv_records(path, ["file_id", "text"], strip=False)}


def fingerprint_files(*paths: str | Path) -> str:
    """sha256 over files' bytes (a model folder's weights and config): which model made a cache."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()[:16]


def text_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()
