"""Which raw samples each (rank, worker) reads, in which order, in each epoch.

Everything here is a pure function of (seed, rank, worker, epoch, position) in resampled mode
and of (seed, lane, epoch, position) in exact mode, which is what makes a stream resumable: a
reader restarted at raw position `start` produces exactly the samples it would have produced
after its first `start` ones.

- resampled: shards are drawn at random by source weight, read through a shuffle buffer, in
  blocks of `block_size` samples. Each block restarts from its own seed, so resuming costs at
  most one block of tar reading (no decoding).
- exact: the epoch's material (see `exact.epoch_material`: each source's share, shards in an
  order shuffled per epoch when training) is cut into `lanes` contiguous, nearly equal ranges,
  so every planned sample is read exactly once; short or broken shards are filled with
  placeholders so every lane keeps its planned size. Each lane has its own shuffle buffer; which
  lane sample sits at which global position is `exact.ExactLayout`'s business, and it does not
  depend on the number of ranks or workers.
"""
from __future__ import annotations

import bisect
import itertools
import random
from typing import Iterator

from .reading import ErrorLog, derive_seed, placeholder, read_shard, shuffled
from .sources import Source
from ..errors import RunError, UserError


def resampled_samples(sources: list[Source], *, seed: int, rank: int, worker: int, epoch: int,
                      start: int, block_size: int, shuffle_buffer: int, exclude: frozenset[str],
                      errors: ErrorLog, keep: frozenset[int] | None = None,
                      repeats: dict[int, float] | None = None) -> Iterator[dict]:
    """`keep`: the class codes to stream (others dropped); `repeats`: expected copies per class
    code (class-balanced sampling: rare classes repeated, frequent ones thinned)."""
    draw = _shard_drawer(sources)
    block, skip = divmod(start, block_size)
    for b in itertools.count(block):
        rng = random.Random(derive_seed(seed, "resampled", rank, worker, epoch, b))
        raw = _drawn_shards(draw, rng, errors)
        if exclude:
            raw = (s for s in raw if s["__key__"] not in exclude)
        if keep is not None:
            raw = (s for s in raw if class_code(s) in keep)
        if repeats:
            raw = _repeated(raw, repeats, rng)
        yield from itertools.islice(shuffled(raw, shuffle_buffer, rng), skip, block_size)
        skip = 0


def class_code(sample: dict) -> int:
    return int(sample["cls"]) if "cls" in sample else -1


def _repeated(samples: Iterator[dict], repeats: dict[int, float], rng: random.Random) -> Iterator[dict]:
    """Each sample floor(w) or floor(w)+1 times, w its class's expected count (mean w)."""
    for sample in samples:
        w = repeats.get(class_code(sample), 1.0)
        for _ in range(int(w) + (rng.random() < w - int(w))):
            yield sample


def _shard_drawer(sources: list[Source]):
    """rng -> url. A source is drawn with probability weight / mean shard size (when sizes
    are known) so that weights are sample fractions; a shard within it by its size."""
    live = [s for s in sources if s.share > 0 and s.urls]
    if not live:
        raise UserError("no source has shards and a positive weight")
    src_weights, shard_cum = [], []
    for s in live:
        counts = s.counts if s.counts is not None else [1] * len(s.urls)
        mean = max(sum(counts) / len(counts), 1e-9) if s.counts is not None else 1.0
        src_weights.append(s.share / mean)
        shard_cum.append(list(itertools.accumulate(max(c, 0) for c in counts)))
    src_cum = list(itertools.accumulate(src_weights))

    def draw(rng: random.Random) -> str:
        i = bisect.bisect_right(src_cum, rng.random() * src_cum[-1])
        i = min(i, len(live) - 1)
        cum = shard_cum[i]
        j = min(bisect.bisect_right(cum, rng.random() * cum[-1]), len(cum) - 1) if cum[-1] > 0 else rng.randrange(len(cum))
        return live[i].urls[j]
    return draw


def _drawn_shards(draw, rng: random.Random, errors: ErrorLog, max_empty: int = 50) -> Iterator[dict]:
    empty_in_a_row = 0
    while True:
        url = draw(rng)
        n = 0
        for sample in read_shard(url, errors):
            n += 1
            yield sample
        empty_in_a_row = 0 if n else empty_in_a_row + 1
        if empty_in_a_row >= max_empty:
            raise RunError(f"{max_empty} shards in a row gave no sample (last: {url}); first errors: {errors.messages}")


def lane_samples(material: list[tuple[str, int]], *, seed: int, lane: int, lanes: int, epoch: int, start: int,
                 shuffle: bool, shuffle_buffer: int, exclude: frozenset[str], errors: ErrorLog,
                 keep: frozenset[int] | None = None) -> Iterator[dict]:
    """Lane `lane` of `lanes`: its contiguous share of the epoch's material (`exact.epoch_material`:
    (url, samples) spans), placeholders where samples are missing or excluded, through its own
    shuffle buffer, from its `start`-th sample on (the ones before are read, not decoded). With
    `keep`, a span counts the samples of those class codes only (see sources.class_subset)."""
    total = sum(c for _, c in material)
    lo, hi = lane * total // lanes, (lane + 1) * total // lanes
    raw = _read_range(material, lo, hi, errors, keep)
    if exclude:
        raw = (placeholder("excluded") if s["__key__"] in exclude else s for s in raw)
    if shuffle:
        raw = shuffled(raw, shuffle_buffer, random.Random(derive_seed(seed, "exact", lane, epoch)))
    return itertools.islice(raw, start, None)


def _read_range(shards: list[tuple[str, int]], lo: int, hi: int, errors: ErrorLog,
                keep: frozenset[int] | None = None) -> Iterator[dict]:
    """Samples lo..hi-1 of the concatenated (url, samples) spans, each span the first `samples`
    of its shard; skipped ones are read but not decoded."""
    offset = 0
    for url, count in shards:
        if offset + count > lo and offset < hi:
            first, last = max(lo - offset, 0), min(hi - offset, count)
            got = 0
            if keep is None:  # a lane starting inside the shard seeks to its first sample
                samples = itertools.islice(read_shard(url, errors, skip=first), last - first)
            else:
                kept = (s for s in read_shard(url, errors) if class_code(s) in keep)
                samples = itertools.islice(kept, first, last)
            for sample in samples:
                got += 1
                yield sample
            for _ in range(last - first - got):
                errors.add(f"{url}: fewer samples than its manifest lists")
                yield placeholder("missing")
        offset += count
