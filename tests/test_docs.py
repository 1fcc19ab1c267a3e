"""The documentation names tests that exist: every `test_x.py::test_name` in docs/ and README.md."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_test_id_in_the_docs_exists(doc):
    ids = set(re.findall(r"(test_\w+\.py)::(test_\w+)", doc.read_text()))
    missing = [f"{f}::{name}" for f, name in sorted(ids)
               if not any(re.search(rf"^def {name}\(", p.read_text(), re.M) for p in (ROOT / "tests").rglob(f))]
    assert not missing, missing
