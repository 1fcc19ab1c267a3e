"""Images per second per loader worker: the exact stream with one global order (resumable on any
number of processes and workers) against the exact stream as it was before it.

Compared, on the same shards, in one process with one thread (what one DataLoader worker does),
both as slot 0 of a run of 8 processes x 1 worker with a micro-batch of B, MAE augmentation at 224:

(a) today's exact mode (before the global order, commit 1aab975): the split cut into one lane per
    (process, worker) slot; the worker reads its lane sequentially through its shuffle buffer and
    decodes every sample, B per batch. Rebuilt here from the same primitives that code used
    (`order.lane_samples` over the epoch's shards, `decode_sample` with a per-sample RNG, the same
    stacking), behind the same in-process DataLoader;
(b) ours: `FaceStream(mode="exact")` with a global batch of 8 x B and the default lanes (64): the
    process's share of every global step is eight lane chunks, which its worker reads and decodes
    (`shared.stream.exact`): the cost of locating samples and of keeping several lanes open.

Extra line (INFO): the same with a global batch of 8 x B - 8, so that processes' shares do not
line up with lane chunks and one lane per process is read by two processes (each skips, reads
but does not decode, the other's samples).

The target is (b) >= 0.95x (a): the flexibility costs no speed. Timing as in input_pipeline.py:
warm-up, then interleaved repeats, the median of the per-repeat ratios.

    python benchmarks/exact_stream.py [--images N] [--batch-size B] [--repeats R] [--quick]
"""
from __future__ import annotations

import argparse
import itertools
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset

from shared.stream import Augment, FaceStream, StreamConfig, build_sources
from shared.stream.dataset import _stack
from shared.stream.decode import decode_sample
from shared.stream.exact import epoch_material
from shared.stream.order import lane_samples
from shared.stream.reading import ErrorLog, derive_seed, placeholder
from common import header, paired_ratio, parse_sized_args, result, verdict
from face_data import make_shards
from hardware import machine

PROCESSES = 8
SHUFFLE_BUFFER = 64
WARMUP_BATCHES = 2
TARGET_RATIO = 0.95
QUICK = dict(images=384, batch_size=16, repeats=3)


class TodaysWorker(IterableDataset):
    """Slot 0's batches in the exact mode before the global order (one lane per slot)."""

    def __init__(self, sources, batch_size: int, aug: Augment, seed: int = 0):
        self.sources, self.batch_size, self.aug, self.seed = sources, batch_size, aug, seed

    def __iter__(self) -> Iterator[dict]:
        for epoch in itertools.count():
            material = epoch_material(self.sources, seed=self.seed, epoch=epoch, shuffle=True)
            total = sum(c for _, c in material)
            errors = ErrorLog()
            raw = lane_samples(material, seed=self.seed, lane=0, lanes=PROCESSES, epoch=epoch, start=0, shuffle=True,
                               shuffle_buffer=SHUFFLE_BUFFER, exclude=frozenset(), errors=errors)
            cursor, per_lane = 0, -(-total // PROCESSES)
            for _ in range(-(-per_lane // self.batch_size)):
                images, valid, labels, keys, metas = [], [], [], [], []
                while len(images) < self.batch_size:
                    sample = next(raw, None) or placeholder("padding")
                    cursor += 1
                    rng = random.Random(derive_seed(self.seed, "augment", "lane", 0, epoch, cursor))
                    image, meta, label = decode_sample(sample, self.aug, rng)
                    images.append(image)
                    valid.append(image is not None)
                    labels.append(label)
                    keys.append(sample["__key__"])
                    metas.append(meta)
                yield {"image": _stack(images, self.aug.size), "valid": torch.tensor(valid),
                       "label": torch.tensor(labels, dtype=torch.int64), "key": keys, "meta": metas}


def todays_batches(sources, batch_size: int, aug: Augment) -> Iterator[int]:
    loader = DataLoader(TodaysWorker(sources, batch_size, aug), batch_size=None, num_workers=0,
                        collate_fn=lambda b: b)
    for batch in loader:
        yield len(batch["key"])


def our_batches(sources, batch_size: int, global_batch: int, aug: Augment) -> Iterator[int]:
    config = StreamConfig(mode="exact", batch_size=batch_size, global_batch=global_batch, num_workers=0,
                          shuffle_buffer=SHUFFLE_BUFFER, augment=aug)
    stream = FaceStream(sources, config, rank=0, world_size=PROCESSES)
    while True:
        for batch in stream:
            yield len(batch["key"])


def timed(pipelines: dict[str, Iterator[int]], batches: int, repeats: int) -> dict[str, list[float]]:
    for it in pipelines.values():
        for _ in range(WARMUP_BATCHES):
            next(it)
    rates: dict[str, list[float]] = {name: [] for name in pipelines}
    for _ in range(repeats):
        for name, it in pipelines.items():
            start = time.perf_counter()
            images = sum(next(it) for _ in range(batches))
            rates[name].append(images / (time.perf_counter() - start))
    return rates


def run(args, workdir: Path) -> None:
    shards = make_shards(workdir, args.images)
    sources = build_sources({"celeba": str(shards)})
    aug = Augment(kind="mae", size=224)
    b = args.batch_size
    per_repeat = max(1, args.images // (PROCESSES * b))  # one process's share of an epoch
    names = ("today's exact mode: one lane per slot", "ours: one global order, default lanes",
             "ours: shares not lined up with lanes (extra)")
    rates = timed({names[0]: todays_batches(sources, b, aug),
                   names[1]: our_batches(sources, b, PROCESSES * b, aug),
                   names[2]: our_batches(sources, b - 1, PROCESSES * (b - 1), aug)}, per_repeat, args.repeats)
    for name in names:
        print(f"{name:50s} {statistics.median(rates[name]):8.1f} img/s per worker (median of {args.repeats}: "
              + ", ".join(f"{r:.1f}" for r in rates[name]) + ")")
    ratio, low, high = paired_ratio(rates[names[1]], rates[names[0]])
    print(f"ours / today's: {ratio:.3f}x (per-repeat range {low:.3f}-{high:.3f}); target >= {TARGET_RATIO}x")
    figures = f"{statistics.median(rates[names[1]]):.1f} vs {statistics.median(rates[names[0]]):.1f} img/s per worker"
    result("exact_stream", "exact stream, global order vs today's lanes per slot (images/s per worker)", figures,
           ratio=ratio, target=f"≥ {TARGET_RATIO}x", verdict=verdict(ratio, TARGET_RATIO),
           note=f"slot 0 of {PROCESSES} processes x 1 worker, batch {b}, {args.images} synthetic faces, MAE 224")
    extra, _, _ = paired_ratio(rates[names[2]], rates[names[0]])
    result("exact_stream (misaligned)", "exact stream, shares across lane chunks vs today's", f"{extra:.3f}x",
           ratio=extra, verdict="INFO")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=3072, help="face images to generate (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="micro-batch per process (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per pipeline (default %(default)s)")
    args = parse_sized_args(parser, argv, QUICK)
    if args.batch_size < 2 or args.images < PROCESSES * args.batch_size or args.repeats < 1:
        parser.error(f"need --batch-size >= 2, --images >= {PROCESSES} x --batch-size, --repeats >= 1")
    header(machine())
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="exact-stream-") as tmp:
        run(args, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
