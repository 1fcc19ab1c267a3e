"""Shared fixtures: tiny raw datasets in the published layouts, and their converted shards."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from shared.shards.sources import SOURCES
from shared.shards.writer import ShardSettings, build_shards
from shared.synthetic import write_all

# fixture folder -> face-shards subcommand
CONVERTERS = {"affectnet": "affectnet", "casia": "casia-webface", "casia_rec": "casia-webface",
              "celeba": "celeba", "imdb_wiki": "imdb-wiki"}
SMALL = ShardSettings(size=64, margin=0.2, quality=90, shard_size=6, seed=0)


@pytest.fixture(scope="session")
def raw(tmp_path_factory) -> dict:
    """{name: Planted} for the five raw layouts, written once per test session."""
    return write_all(tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="session")
def shards(raw, tmp_path_factory) -> dict[str, Path]:
    """{name: shard folder} converted from `raw` with SMALL settings (read-only for tests)."""
    out = tmp_path_factory.mktemp("shards")
    folders = {}
    for name, planted in raw.items():
        scan = SOURCES[CONVERTERS[name]].scan(planted.root)
        build_shards(scan, out / name, SMALL, workers=2, progress=False)
        folders[name] = out / name
    return folders


@pytest.fixture
def shard_copy(shards, tmp_path):
    """A writable copy of one converted source's shards."""
    def copy(name: str) -> Path:
        dst = tmp_path / f"{name}-copy"
        shutil.copytree(shards[name], dst)
        return dst
    return copy


# a distinct face colour per expression class: a tiny encoder can learn it in a few dozen steps
PALETTE = [(230, 80, 80), (80, 200, 80), (80, 80, 230), (220, 220, 60), (200, 80, 220), (60, 210, 210),
           (140, 140, 140), (250, 150, 40)]


@pytest.fixture(scope="session")
def expression_shards(tmp_path_factory):
    """AffectNet-format shards whose expression is visible (face colour): 12 train and 5
    validation faces per class 0-7, plus 4 train faces of code 8 (None), which no class set uses."""
    import numpy as np
    from shared.shards.items import Item, Scan
    from shared.synthetic import face_jpeg
    root = tmp_path_factory.mktemp("expressions")
    rng, items = np.random.default_rng(1), []
    for split, per_class in (("train", 12), ("val", 5)):
        for code in range(8):
            for i in range(per_class):
                path = root / f"{split}_{code}_{i}.jpg"
                x, y = (int(v) for v in rng.integers(4, 20, 2))
                path.write_bytes(face_jpeg(rng, (80, 80), (x, y, 56, 56), skin=PALETTE[code]))
                items.append(Item(f"affectnet-{split}_{code}_{i}", split, path.name, str(path),
                                  box=(x, y, 56, 56), meta={"expression": code}))
    for i in range(4):
        path = root / f"train_8_{i}.jpg"
        path.write_bytes(face_jpeg(rng, (80, 80), (12, 12, 56, 56)))
        items.append(Item(f"affectnet-train_8_{i}", "train", path.name, str(path), meta={"expression": 8}))
    out = root / "shards"
    build_shards(Scan("affectnet", root, items, [], [], holdout_splits={"val"}), out,
                 ShardSettings(size=32, margin=0.1, shard_size=16), workers=1, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    """A randomly initialised tiny ViT saved as a timm folder (what stage 1 exports)."""
    import torch
    from timm.models.vision_transformer import VisionTransformer
    from shared.export import save_timm_folder
    torch.manual_seed(0)
    args = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=0, global_pool="token")
    out = tmp_path_factory.mktemp("encoder") / "encoder"
    save_timm_folder(VisionTransformer(**args), out, architecture="vit_tiny_patch16_224", model_args=args,
                     mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return out
