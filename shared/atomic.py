"""Files that no reader sees half-written, and whose bytes depend only on what they hold.

Every artifact the suite writes (weights, reports, tables, manifests, feature files) goes
through here: the bytes are written to a hidden temporary file in the same folder
(`.<name>.<pid>.partial`, so a `*.json` or `step_*` glob never picks it up), flushed to disk
(fsync), then renamed over the final name (`os.replace`, atomic on POSIX) and the folder's entry
flushed too. A kill or a full disk leaves the previous file (or none), never a torn one; the
temporary file of a failed write is removed.

The content is canonical where a format allows several spellings of the same thing: JSON
keys sorted; safetensors headers with their `__metadata__` keys sorted (safetensors writes
them in a random order per process: safetensors/safetensors#584). So two runs with the same
inputs, configuration and seed write the same bytes (README: "Identical runs, identical bytes").
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import struct
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Sequence

PARTIAL = ".partial"


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: str | os.PathLike) -> None:
    """Flush every file under `folder`, then the folder's entries."""
    for path in Path(folder).rglob("*"):
        if path.is_file():
            fsync_path(path)
    fsync_path(folder)


def partial_name(path: Path) -> Path:
    """The temporary sibling a write of `path` goes through (one per process)."""
    return path.with_name(f".{path.name}.{os.getpid()}{PARTIAL}")


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *, fsync: bool = True, **kwargs) -> Iterator[IO]:
    """`open(path, mode)` for a file written in pieces (a tar, rows of a CSV); the file appears
    at `path` only when the block ends without an error. mode: "w" (text; `kwargs` go to open:
    newline, encoding) or "wb". Parent folders are made. Raises what the write raised (OSError
    on a full disk), after removing the temporary file."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(path)
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
    try:
        with open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if fsync:
        fsync_path(path.parent)  # the rename itself reaches the disk


def write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> Path:
    """`data` at `path`, atomically (see the module docstring); returns the path."""
    with atomic_open(path, "wb", fsync=fsync) as handle:
        handle.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, *, fsync: bool = True) -> Path:
    """UTF-8 `text` at `path`, atomically, with "\\n" line ends as given."""
    return write_bytes(path, text.encode("utf-8"), fsync=fsync)


def json_text(obj: Any, *, indent: int | None = 1) -> str:
    """The canonical JSON of `obj`: keys sorted, a final newline (NaN stays NaN, as Python reads it)."""
    return json.dumps(obj, indent=indent, sort_keys=True) + "\n"


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 1, fsync: bool = True) -> Path:
    """`obj` as canonical JSON (json_text) at `path`, atomically."""
    return write_text(path, json_text(obj, indent=indent), fsync=fsync)


def write_csv(path: str | os.PathLike, header: Sequence[str] | None, rows: Iterable[Sequence[Any]], *,
              fsync: bool = True) -> Path:
    """A CSV (csv module's default dialect, "\\r\\n" row ends) of `header` (None: none) then
    `rows`, atomically. Cells are written as str() makes them: format floats before."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    if header is not None:
        writer.writerow(header)
    writer.writerows(rows)
    return write_text(path, buffer.getvalue(), fsync=fsync)


def write_yaml(path: str | os.PathLike, obj: Any, *, fsync: bool = True) -> Path:
    """`obj` as YAML in its own key order (a resolved configuration reads best as declared), atomically."""
    import yaml
    return write_text(path, yaml.safe_dump(obj, sort_keys=False), fsync=fsync)


def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its header's `__metadata__` keys sorted and the header
    padded with spaces to 8 bytes, as the format asks; the tensor bytes are untouched.
    Raises ValueError when `data` is not a safetensors file."""
    if len(data) < 8:
        raise ValueError("not a safetensors file: fewer than 8 bytes")
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        raise ValueError(f"not a safetensors file: header of {size} bytes in a file of {len(data)}")
    header = json.loads(data[8:8 + size])
    metadata = header.pop("__metadata__", None)
    ordered = ({"__metadata__": dict(sorted(metadata.items()))} if metadata is not None else {}) | header
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + size:]


def write_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None, *,
                      fsync: bool = True) -> Path:
    """torch tensors (contiguous, any device: copied to the CPU) and string metadata as one
    .safetensors file, canonical (canonical_safetensors) and atomic."""
    from safetensors.torch import save
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return write_bytes(path, canonical_safetensors(save(cpu, metadata=metadata)), fsync=fsync)


@contextmanager
def files_into(folder: str | os.PathLike, *, fsync: bool = True) -> Iterator[Path]:
    """A temporary folder beside `folder` for a writer that makes several files at once (timm's
    save_for_hf); when the block ends without an error each file is moved into `folder` by an
    atomic rename, so a reader there sees each file whole or not at all (the previous one, when
    the name existed). The temporary folder is removed in every case."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = partial_name(folder)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        if fsync:
            fsync_tree(staging)
        for path in sorted(staging.rglob("*")):
            target = folder / path.relative_to(staging)
            if path.is_dir():
                target.mkdir(exist_ok=True)
            else:
                os.replace(path, target)
        if fsync:
            fsync_path(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def seal_folder(tmp: str | os.PathLike, final: str | os.PathLike, *, fsync: bool = True) -> Path:
    """Rename a finished folder `tmp` to `final` (absent, or an empty folder) once everything in
    it is on disk, so a reader of `final` never sees it in part; then flush the parent's entries."""
    tmp, final = Path(tmp), Path(final)
    if fsync:
        fsync_tree(tmp)  # the rename must not reach the disk before the files do
    os.replace(tmp, final)
    if fsync:
        fsync_path(final.parent)
    return final
