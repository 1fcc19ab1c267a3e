"""What made an artifact: code version, configuration, hashes of the inputs."""
from __future__ import annotations

import hashlib
import os
import subprocess
from importlib import metadata
from pathlib import Path


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def code_version() -> dict[str, str]:
    """Package version, plus the git commit when running from a checkout."""
    try:
        version = metadata.version("affect-lineage")
    except metadata.PackageNotFoundError:
        version = "unknown"
    info = {"package": "affect-lineage", "version": version}
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
        info["git_commit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    return info

