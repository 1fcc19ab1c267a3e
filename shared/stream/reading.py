"""Raw samples out of tar shards, wherever they are; read errors are counted, never slept on."""
from __future__ import annotations

import hashlib
import itertools
import random
from typing import Iterable, Iterator
from urllib.parse import urlparse

import fsspec
from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_expander

PLACEHOLDER = "__placeholder__"


class ErrorLog:
    """Counts read and decode errors and keeps the first few messages for the report."""

    def __init__(self, keep: int = 5):
        self.count = 0
        self.keep = keep
        self.messages: list[str] = []
        self.unreported: list[str] = []

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.messages) < self.keep:
            self.messages.append(message)
            self.unreported.append(message)

    def handler(self, exn: Exception) -> bool:
        """webdataset handler: note the error and go on (its own warn handler sleeps)."""
        self.add(f"{type(exn).__name__}: {exn}")
        return True

    def take_unreported(self) -> list[str]:
        out, self.unreported = self.unreported, []
        return out


def derive_seed(*parts) -> int:
    """A 64-bit seed from (base seed, purpose, rank, worker, epoch, ...): independent streams."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")


def open_url(url: str):
    """Local paths and `pipe:` through webdataset; other schemes (s3://, gs://, ...) through fsspec."""
    scheme = urlparse(url).scheme
    if scheme in ("", "file", "pipe") or len(scheme) == 1:  # len 1: a Windows drive letter
        return gopen(url)
    return fsspec.open(url, "rb").open()


def read_shard(url: str, errors: ErrorLog, skip: int = 0) -> Iterator[dict]:
    """The samples of one shard from its `skip`-th on, as dicts of raw bytes; a truncated tar ends
    early, counted, and so does an empty one (a zero-byte file, or a tar without members). In a
    local file the skipped samples are passed over by their tar headers (a seek), elsewhere read."""
    offset = _sample_offset(url, skip) if skip else 0

    def opened():
        try:
            stream = open_url(url)
            if offset:
                stream.seek(offset)
            yield {"url": url, "stream": stream}
        except Exception as exn:  # noqa: BLE001 - a missing or unreachable shard is counted and skipped
            errors.add(f"cannot open {url}: {type(exn).__name__}: {exn}")

    before, n = errors.count, 0
    files = tar_file_expander(opened(), handler=errors.handler)
    samples = group_by_keys(files, handler=errors.handler)
    if skip and not offset:
        samples = itertools.islice(samples, skip, None)
    for n, sample in enumerate(samples, 1):
        yield sample
    if n == 0 and errors.count == before and not skip:  # a valid tar with nothing in it raises nothing
        errors.add(f"{url}: empty shard (no samples)")


def _sample_offset(url: str, skip: int) -> int:
    """Where the `skip`-th sample's first member starts in a local tar, found from the 512-byte
    member headers alone; 0 (read and skip instead) for other URLs, a tar that ends first, or
    headers this scan does not follow (GNU long names, pax)."""
    scheme = urlparse(url).scheme
    if scheme not in ("", "file") and len(scheme) != 1:
        return 0
    path = url[len("file://"):] if scheme == "file" else url
    try:
        with open(path, "rb") as f:
            position, count, last = 0, 0, None
            while True:
                f.seek(position)
                header = f.read(512)
                if len(header) < 512 or not header.strip(b"\0") or header[156:157] in (b"L", b"K", b"x", b"g"):
                    return 0
                name = header[:100].split(b"\0", 1)[0].decode()
                prefix = header[345:500].split(b"\0", 1)[0].decode()
                key, _ = base_plus_ext(f"{prefix}/{name}" if prefix else name)
                if header[156:157] in (b"0", b"\0") and key is not None and key != last:
                    if count == skip:
                        return position
                    count, last = count + 1, key
                size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
                position += 512 + -(-size // 512) * 512
    except (OSError, ValueError, UnicodeDecodeError):
        return 0


def shuffled(samples: Iterable, bufsize: int, rng: random.Random) -> Iterator:
    """Shuffle through a buffer of `bufsize` samples, driven only by `rng` (so it replays)."""
    buf: list = []
    for sample in samples:
        if len(buf) < bufsize:
            buf.append(sample)
            continue
        i = rng.randrange(bufsize)
        yield buf[i]
        buf[i] = sample
    rng.shuffle(buf)
    yield from buf


def placeholder(reason: str) -> dict:
    return {"__key__": "", PLACEHOLDER: reason}
