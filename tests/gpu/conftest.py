"""The built-in data the GPU lineage runs on, made once per session (see gpu_utils.py)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .gpu_utils import DRY_RUN, ON_GPU, ROOT
from shared.builtin_data import ROOT_ENV


@pytest.fixture(scope="session")
def builtin(tmp_path_factory):
    """The built-in raw datasets, face shards, reaction videos and tiny audio / text models
    (--quick sizes), where every stage run without data arguments finds them."""
    if not (ON_GPU or DRY_RUN):
        pytest.skip("needs a CUDA GPU")
    root = tmp_path_factory.mktemp("builtin")
    proc = subprocess.run([sys.executable, "-m", "shared.builtin_data", "all", "--root", str(root), "--quick"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    previous = os.environ.get(ROOT_ENV)
    os.environ[ROOT_ENV] = str(root)  # inherited by every stage the tests start
    yield root
    if previous is None:
        os.environ.pop(ROOT_ENV, None)
    else:
        os.environ[ROOT_ENV] = previous
