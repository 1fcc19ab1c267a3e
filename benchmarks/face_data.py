"""The benchmarks' face images: synthetic CelebA faces through the real converter.

`python -m shared.shards celeba` stores them as 256x256 JPEG crops (quality 95) in webdataset
shards, exactly what training reads; `make_dataset` also copies the same JPEG bytes into an
ImageFolder for the reference pipelines. Synthetic faces are smoother than photos, so their JPEGs
are smaller and decode faster than real ones: compare pipelines on the same bytes, as ratios.

`kind="photo"` is the harder set: the same faces with a noise texture added to the raw images
(Gaussian, sigma 10-45 levels per image, luminance and a third of it per channel), which the
converter keeps, so its 256 px q95 crops are 30-55 KB, the size of photos' (the smooth faces
are ~12.5 KB), and decode about as slowly.
"""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from shared.synthetic import write_celeba

CELEBA_REJECTS = 2  # write_celeba plants one missing and one unreadable image
KINDS = ("faces", "photo")


def texture(raw: Path, seed: int = 0) -> None:
    """Noise-texture every readable JPEG under `raw` in place (the "photo" set), quality 95."""
    rng = np.random.default_rng(seed)
    for path in sorted(raw.rglob("*.jpg")):
        try:
            image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
        except OSError:  # the planted unreadable image stays unreadable
            continue
        sigma = rng.uniform(10, 45)
        noise = rng.normal(0, sigma, image.shape[:2] + (1,)) + rng.normal(0, sigma / 3, image.shape)
        out = io.BytesIO()
        Image.fromarray(np.clip(image + noise, 0, 255).astype(np.uint8)).save(out, format="JPEG", quality=95)
        path.write_bytes(out.getvalue())


def make_shards(workdir: Path, n_images: int, kind: str = "faces") -> Path:
    """Raw CelebA layout (noise-textured for kind="photo") -> face shards (the real converter);
    returns the shard folder."""
    if kind not in KINDS:
        raise ValueError(f"image kind {kind!r}; expected one of {KINDS}")
    raw, shards = workdir / "raw", workdir / "shards"
    for stale in (raw, shards):  # an earlier run in the same folder may have used another N
        shutil.rmtree(stale, ignore_errors=True)
    write_celeba(raw, seed=0, n=n_images + CELEBA_REJECTS)
    if kind == "photo":
        texture(raw)
    convert = [sys.executable, "-m", "shared.shards", "celeba", str(raw), "--out", str(shards), "--no-progress"]
    done = subprocess.run(convert, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"face-shards failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return shards


def make_dataset(workdir: Path, n_images: int, kind: str = "faces") -> tuple[Path, Path]:
    """Face shards and an ImageFolder of the same JPEG bytes: (shard folder, ImageFolder root)."""
    shards, folder = make_shards(workdir, n_images, kind), workdir / "imagefolder"
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
