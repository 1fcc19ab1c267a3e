"""Raw samples out of tar shards, wherever they are; read errors are counted, never slept on."""
from __future__ import annotations

import hashlib
import random
from typing import Iterable, Iterator
from urllib.parse import urlparse

import fsspec
from webdataset.gopen import gopen
from webdataset.tariterators import group_by_keys, tar_file_expander

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


def read_shard(url: str, errors: ErrorLog) -> Iterator[dict]:
    """The samples of one shard, as dicts of raw bytes; a truncated tar ends early, counted, and
    so does an empty one (a zero-byte file, or a tar without members)."""
    def opened():
        try:
            yield {"url": url, "stream": open_url(url)}
        except Exception as exn:  # noqa: BLE001 - a missing or unreachable shard is counted and skipped
            errors.add(f"cannot open {url}: {type(exn).__name__}: {exn}")

    before, n = errors.count, 0
    files = tar_file_expander(opened(), handler=errors.handler)
    for n, sample in enumerate(group_by_keys(files, handler=errors.handler), 1):
        yield sample
    if n == 0 and errors.count == before:  # a valid tar with nothing in it raises nothing
        errors.add(f"{url}: empty shard (no samples)")


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
