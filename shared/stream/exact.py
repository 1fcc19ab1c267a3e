"""The exact epoch: which samples it holds, in which global order, and who reads what.

An epoch is a fixed sequence of global positions 0, 1, 2, ... that depends on the seed, the
epoch, the sources (their shards and sample counts), their weights, the exclusions and three
settings kept for the whole run (`lanes`, `shuffle_buffer`, the global batch), never on the
number of processes or loader workers:

1. the material (`epoch_material`): each source's share of the epoch, as (shard, samples)
   spans. Without weights, every sample of every source once. With weights, the epoch keeps the
   sources' total sample count and source s gets the fraction w_s / sum(w) of it: a source whose
   share exceeds its size is read in whole passes plus part of one more, a smaller share is a
   part of one pass; each pass takes the source's shards in its own shuffled order, so the part
   left out changes from epoch to epoch. When shuffling, the spans of all sources are shuffled
   together.
2. the lanes: the material is cut into `lanes` contiguous, nearly equal ranges (placeholders
   pad the short ones), each read through its own shuffle buffer (`order.lane_samples`).
3. the layout (`ExactLayout`): global step s holds positions s*G .. s*G + G - 1, where lane l
   contributes its samples s*c .. s*c + c - 1 (c = G / lanes) at positions s*G + l*c + ....

A run of W processes with micro-batch B and A micro-batches per step (W * A * B = G) gives
process r the positions s*G + r*G/W ... of each step, A micro-batches of B in a row, and splits
each micro-batch into one contiguous part per loader worker. A worker opens the lanes its parts
touch and reads each forward, skipping (reading, not decoding) what other workers decode: when
the workers' parts line up with lane chunks (lanes a multiple of W * K), no sample is read twice.
A position is therefore a global sample count, and a stream saved at step s on one shape goes
on at step s on any other with the same G.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator

from . import order
from .reading import ErrorLog, derive_seed
from .sources import Source
from ..errors import UserError

MAX_DEFAULT_LANES = 64


def quotas(sources: list[Source]) -> list[int]:
    """Samples each source contributes to one epoch (see the module docstring); the total is
    the sources' total sample count. Largest-remainder rounding keeps the sum exact."""
    sizes = [s.samples or 0 for s in sources]
    if all(s.weight is None for s in sources):
        return sizes
    weights = [s.share if n > 0 else 0.0 for s, n in zip(sources, sizes)]
    if not sum(weights):
        raise UserError("exact mode: no source with samples has a positive weight")
    total = sum(sizes)
    exact = [total * w / sum(weights) for w in weights]
    out = [int(x) for x in exact]
    by_remainder = sorted(range(len(out)), key=lambda i: (out[i] - exact[i], i))
    for i in by_remainder[: total - sum(out)]:
        out[i] += 1
    return out


def check_counts(sources: list[Source]) -> None:
    missing = [s.name for s in sources if s.counts is None]
    if missing:
        raise UserError(f"exact mode needs per-shard sample counts; source(s) {missing} are URL patterns "
                        "without a manifest: point them at the shard folder written by face-shards")


def epoch_material(sources: list[Source], *, seed: int, epoch: int, shuffle: bool) -> list[tuple[str, int]]:
    """The epoch's (url, samples) spans: each the first `samples` of its shard (a shard can
    appear more than once when its source is repeated)."""
    check_counts(sources)
    spans: list[tuple[str, int]] = []
    for source, quota in zip(sources, quotas(sources)):
        shards = [(u, c) for u, c in zip(source.urls, source.counts) if c > 0]
        passes = 0
        while quota > 0:
            order_of_pass = list(shards)
            if shuffle:
                random.Random(derive_seed(seed, "exact-source", source.name, epoch, passes)).shuffle(order_of_pass)
            for url, count in order_of_pass:
                if quota <= 0:
                    break
                spans.append((url, min(count, quota)))
                quota -= count
            passes += 1
    if shuffle:
        random.Random(derive_seed(seed, "exact-order", epoch)).shuffle(spans)
    return spans


def default_lanes(global_batch: int) -> int:
    """The largest divisor of the global batch not above 64."""
    return max(d for d in range(1, min(global_batch, MAX_DEFAULT_LANES) + 1) if global_batch % d == 0)


@dataclass(frozen=True)
class ExactLayout:
    """Global positions of one epoch, and which of them a (rank, micro-batch, worker) gets."""
    total: int  # samples of the material
    lanes: int
    global_batch: int  # G: samples per optimizer step over all processes
    world_size: int
    micro_batch: int  # B: per process and micro-batch
    workers: int  # loader workers per process

    def __post_init__(self):
        g, w, b = self.global_batch, self.world_size, self.micro_batch
        if g % (w * b):
            raise UserError(f"a global batch of {g} cannot be split into equal micro-batches of {b} on {w} "
                            f"process(es): {w} x {b} must divide {g}")
        if g % self.lanes:
            raise UserError(f"{self.lanes} lanes do not divide the global batch of {g}: choose lanes among its "
                            "divisors (each lane gives the same number of samples to every step)")

    @property
    def chunk(self) -> int:
        return self.global_batch // self.lanes

    @property
    def accum(self) -> int:
        return self.global_batch // (self.world_size * self.micro_batch)

    @property
    def steps(self) -> int:
        """Global steps per epoch: every lane's planned samples, the last step padded."""
        per_lane = -(-self.total // self.lanes)
        return -(-per_lane // self.chunk)

    @property
    def batches(self) -> int:
        """Micro-batches per process and epoch (equal on every process)."""
        return self.steps * self.accum

    def locate(self, position: int) -> tuple[int, int]:
        """(lane, index in the lane) of a global position."""
        step, offset = divmod(position, self.global_batch)
        lane, within = divmod(offset, self.chunk)
        return lane, step * self.chunk + within

    def part(self, rank: int, micro: int, worker: int) -> range:
        """The global positions worker `worker` of process `rank` reads for the process's
        `micro`-th micro-batch of the epoch."""
        step, a = divmod(micro, self.accum)
        first = step * self.global_batch + rank * (self.global_batch // self.world_size) + a * self.micro_batch
        b, k = self.micro_batch, self.workers
        return range(first + worker * b // k, first + (worker + 1) * b // k)


class LaneReaders:
    """The lanes one worker reads, opened when first needed and read forward only."""

    def __init__(self, material: list[tuple[str, int]], lanes: int, **common):
        self.material, self.lanes, self.common = material, lanes, common
        self.open: dict[int, tuple[Iterator[dict], list[int]]] = {}

    def take(self, lane: int, index: int) -> dict | None:
        """Sample `index` of the lane, or None past its end (padding). Indices must grow per lane."""
        if lane not in self.open:
            it = order.lane_samples(self.material, lane=lane, lanes=self.lanes, start=index, **self.common)
            self.open[lane] = (it, [index])
        it, cursor = self.open[lane]
        if index < cursor[0]:
            raise RuntimeError(f"lane {lane}: index {index} requested after {cursor[0]}")
        sample = None
        for _ in range(index - cursor[0] + 1):  # the ones before are other workers' samples
            sample = next(it, None)
        cursor[0] = index + 1
        return sample


def exact_raw(stream, rank: int, worker: int, epoch: int, first_micro: int,
              errors: ErrorLog) -> Iterator[tuple[int, list[tuple[dict | None, random.Random]]]]:
    """(micro-batch, [(raw sample or None for padding, its augmentation RNG), ...]) for one
    worker's parts of this process's micro-batches, from `first_micro` to the epoch's end."""
    cfg, layout = stream.config, stream.layout
    material = epoch_material(stream.sources, seed=cfg.seed, epoch=epoch, shuffle=cfg.shuffle)
    readers = LaneReaders(material, layout.lanes, seed=cfg.seed, epoch=epoch, shuffle=cfg.shuffle,
                          shuffle_buffer=cfg.shuffle_buffer, exclude=stream.exclude, errors=errors, keep=stream.keep)
    for micro in range(first_micro, layout.batches):
        part = []
        for position in layout.part(rank, micro, worker):
            lane, index = layout.locate(position)
            rng = random.Random(derive_seed(cfg.seed, "augment", "lane", lane, epoch, index))
            part.append((readers.take(lane, index), rng))
        yield micro, part
