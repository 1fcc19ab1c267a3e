"""shared/atomic.py: whole files or none, and the same bytes for the same content."""
from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from shared.atomic import (atomic_open, canonical_safetensors, files_into, seal_folder, write_csv, write_json,
                           write_safetensors)


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_json_keys_are_sorted_and_nothing_is_left_beside_it(tmp_path):
    path = write_json(tmp_path / "sub" / "report.json", {"b": 1, "a": {"d": [1, 2], "c": float("nan")}})
    assert path.read_text() == '{\n "a": {\n  "c": NaN,\n  "d": [\n   1,\n   2\n  ]\n },\n "b": 1\n}\n'
    assert leftovers(path.parent) == []


def test_a_failed_write_keeps_the_previous_file_and_removes_its_temporary_file(tmp_path):
    path = write_csv(tmp_path / "table.csv", ["a", "b"], [[1, "x,y"]])
    assert path.read_bytes() == b'a,b\r\n1,"x,y"\r\n'
    with pytest.raises(OSError, match="No space left"):
        with atomic_open(path, "w", newline="") as handle:
            handle.write("half a ta")
            raise OSError(28, "No space left on device")
    assert path.read_bytes() == b'a,b\r\n1,"x,y"\r\n' and leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="mode 'w' or 'wb'"):
        with atomic_open(path, "a"):
            pass


def test_safetensors_metadata_comes_out_sorted_whatever_the_order_given(tmp_path):
    tensors = {"b": torch.arange(6, dtype=torch.float16).view(2, 3), "a": torch.ones(3, dtype=torch.float32)}
    keys = [f"key{i}" for i in range(16)]
    files = []
    for n, order in enumerate((keys, keys[::-1], keys[5:] + keys[:5])):
        files.append(write_safetensors(tmp_path / f"{n}.safetensors", tensors, {k: k.upper() for k in order}))
    assert files[0].read_bytes() == files[1].read_bytes() == files[2].read_bytes()
    data = files[0].read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    assert size % 8 == 0
    header = json.loads(data[8:8 + size])
    assert list(header) == ["__metadata__", "a", "b"] and list(header["__metadata__"]) == sorted(keys)
    with safe_open(str(files[0]), framework="pt") as f:  # safetensors reads it as its own
        assert f.metadata() == {k: k.upper() for k in keys}
    loaded = load_file(files[0])
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)


def test_canonical_form_is_a_fixed_point_and_refuses_what_is_not_safetensors():
    data = save({"x": torch.zeros(3)}, metadata={"z": "1", "y": "2"})
    once = canonical_safetensors(data)
    assert canonical_safetensors(once) == once and once.endswith(data[-12:])  # tensor bytes untouched
    with pytest.raises(ValueError, match="not a safetensors file"):
        canonical_safetensors(b"\xff" * 16)


def test_folders_appear_file_by_file_or_whole(tmp_path):
    target = tmp_path / "encoder"
    target.mkdir()
    (target / "config.json").write_text("old")
    with pytest.raises(RuntimeError):
        with files_into(target) as staging:
            (staging / "config.json").write_text("new")
            raise RuntimeError("the writer failed")
    assert (target / "config.json").read_text() == "old" and leftovers(tmp_path) == []
    with files_into(target) as staging:
        (staging / "config.json").write_text("new")
        (staging / "model.safetensors").write_bytes(b"w")
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
    assert (target / "config.json").read_text() == "new" and leftovers(tmp_path) == []

    tmp = tmp_path / ".tmp-state"
    tmp.mkdir()
    (tmp / "meta.json").write_text("{}")
    assert seal_folder(tmp, tmp_path / "state") == tmp_path / "state"
    assert (tmp_path / "state" / "meta.json").read_text() == "{}" and not tmp.exists()
