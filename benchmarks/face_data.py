"""The benchmarks' face images: synthetic CelebA faces through the real converter.

`python -m shared.shards celeba` stores them as 256x256 JPEG crops (quality 95) in webdataset
shards, exactly what training reads; `make_dataset` also copies the same JPEG bytes into an
ImageFolder for the reference pipelines. Synthetic faces are smoother than photos, so their JPEGs
are smaller and decode faster than real ones: compare pipelines on the same bytes, as ratios.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from shared.synthetic import write_celeba

CELEBA_REJECTS = 2  # write_celeba plants one missing and one unreadable image


def make_shards(workdir: Path, n_images: int) -> Path:
    """Raw CelebA layout -> face shards (the real converter); returns the shard folder."""
    raw, shards = workdir / "raw", workdir / "shards"
    for stale in (raw, shards):  # an earlier run in the same folder may have used another N
        shutil.rmtree(stale, ignore_errors=True)
    write_celeba(raw, seed=0, n=n_images + CELEBA_REJECTS)
    convert = [sys.executable, "-m", "shared.shards", "celeba", str(raw), "--out", str(shards), "--no-progress"]
    done = subprocess.run(convert, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"face-shards failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return shards


def make_dataset(workdir: Path, n_images: int) -> tuple[Path, Path]:
    """Face shards and an ImageFolder of the same JPEG bytes: (shard folder, ImageFolder root)."""
    shards, folder = make_shards(workdir, n_images), workdir / "imagefolder"
    shutil.rmtree(folder, ignore_errors=True)
    written = extract_jpegs(shards, folder / "faces")
    if written != n_images:
        raise SystemExit(f"expected {n_images} converted faces, the shards hold {written}")
    return shards, folder


def shard_paths(shards: Path) -> list[Path]:
    manifest = json.loads((shards / "manifest.json").read_text())
    return [shards / e["name"] for split in manifest["splits"].values() for e in split["shards"]]


def extract_jpegs(shards: Path, out: Path) -> int:
    """Copy every sample's `jpg` member, byte for byte, to out/<key>.jpg; returns the count."""
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for path in shard_paths(shards):
        with tarfile.open(path) as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".jpg"):
                    (out / Path(member.name).name).write_bytes(tar.extractfile(member).read())
                    count += 1
    return count
