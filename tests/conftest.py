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
